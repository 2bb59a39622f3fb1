"""Relative biases: T5 buckets and ALiBi slopes against reference transcriptions;
offset invariance, monotone penalties, gradients, validation, long positions."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import registry
from posjax.encodings import relative_bias as rb

# The encodings of this module, by their capability flags.
BIASES = tuple(n for n in registry.names() if registry.get(n).__module__ == rb.__name__)
LEARNED = tuple(n for n in BIASES if registry.get(n).has_params)
INVARIANT = tuple(n for n in BIASES if registry.get(n).translation_invariant)


def mtf_bucket(rel, bidirectional, num_buckets=32, max_distance=128):
  """mesh-tensorflow's ``_relative_position_bucket`` in float64 pure Python."""
  ret, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    ret += num_buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


def ref_slopes(n):
  """The ALiBi paper's ``get_slopes``, transcribed."""
  def pow2(n):
    start = 2 ** (-2 ** -(math.log2(n) - 3))
    return [start * start ** i for i in range(n)]
  if math.log2(n).is_integer():
    return pow2(n)
  p = 2 ** math.floor(math.log2(n))
  return pow2(p) + ref_slopes(2 * p)[0::2][:n - p]


def make(name, causal=True, num_heads=4, **args):
  return registry.make(name, args, num_heads=num_heads, head_dim=8, model_dim=32,
                       max_len=512, causal=causal)


def init_and_bias(enc, qpos, kpos):
  """(variables, initial bias [B, H, L, S]) of ``enc.bias``, jitted (eager is slow)."""
  bias, variables = jax.jit(lambda q, k: enc.init_with_output(
      jax.random.key(0), None, None, q, k, None, None, method='bias'))(
          jnp.asarray(qpos, jnp.int32), jnp.asarray(kpos, jnp.int32))
  return variables, bias[0]


def bias_fn(enc):
  return lambda v, q, k: enc.apply(v, None, None, q, k, None, None, method='bias')[0]


def initial_biases(names, qpos, kpos):
  """{(name, causal): initial bias} for decoder and encoder variants, one compile."""
  init = lambda enc, q, k: enc.init_with_output(
      jax.random.key(0), None, None, q, k, None, None, method='bias')[0][0]
  keys = [(n, c) for n in names for c in (True, False)]
  return jax.jit(lambda q, k: {key: init(make(*key), q, k) for key in keys})(
      jnp.asarray(qpos, jnp.int32), jnp.asarray(kpos, jnp.int32))


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20), (64, 1000)])
def test_t5_bucket_matches_mesh_tensorflow(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  want = [mtf_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  got = rb.t5_relative_position_bucket(rel, bidirectional=bidirectional,
                                       num_buckets=num_buckets, max_distance=max_distance)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, want)


def test_t5_bucket_known_values():
  bucket = lambda r, bi: rb.t5_relative_position_bucket(jnp.array(r), bidirectional=bi).tolist()
  assert bucket([0, 1, -1, 10**6, -10**6], True) == [0, 17, 1, 31, 15]
  assert bucket([0, 1, 10**6, -1, -15, -10**6], False) == [0, 0, 0, 1, 15, 31]


def test_alibi_slopes():
  np.testing.assert_allclose(rb.alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])
  twelve = [2.0 ** -i for i in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
  np.testing.assert_allclose(rb.alibi_slopes(12), twelve, rtol=1e-6)
  for n in range(1, 65):
    got = rb.alibi_slopes(n)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_slopes(n), rtol=1e-6)


def test_penalty_grows_with_distance():
  q = jnp.full((1, 1), 3000)
  biases = initial_biases(('alibi', 'kerple_log', 'kerple_power'), q, jnp.arange(6001)[None])
  for (name, causal), bias in biases.items():
    row = np.asarray(bias[0, :, 0])  # [H, S], key distance |k - 3000|
    past, future = row[:, 3000::-1], row[:, 3000:]
    for side in (past, future):
      assert (np.diff(side, axis=-1) <= 0).all() and side[:, 0].max() == 0, (name, causal)
    np.testing.assert_array_equal(past, future)
    if name == 'alibi':
      np.testing.assert_allclose(past, -rb.alibi_slopes(4)[:, None] * np.arange(3001),
                                 rtol=1e-6)


def test_bias_depends_only_on_offset():
  qpos = np.array([[0, 3, 7, 40], [200, 5, 9, 1]])
  kpos = np.array([[0, 1, 2, 90, 300], [7, 200, 0, 400, 20]])
  shifts = np.array([0, 1, 977, 123_456]).repeat(2)[:, None]  # Batch of 8.
  biases = initial_biases(INVARIANT, np.tile(qpos, (4, 1)) + shifts,
                          np.tile(kpos, (4, 1)) + shifts)
  for key, bias in biases.items():
    assert bias.shape == (8, 4, 4, 5) and bias.dtype == jnp.float32
    for shifted in np.split(np.asarray(bias), 4)[1:]:
      np.testing.assert_allclose(shifted, bias[:2], rtol=1e-6, atol=1e-6, err_msg=str(key))


def test_t5_direction_and_table():
  enc = make('t5', causal=False)
  variables, bias = init_and_bias(enc, [[10]], [[9, 10, 11, 500]])
  table = enc.table_scale * variables['params']['rel_bias_raw'].value
  assert 0.2 < float(table.std()) < 0.3  # t5x's init of the bias, U(+-0.39) here.
  np.testing.assert_allclose(bias[0, :, 0], table[jnp.array([1, 0, 17, 31])].T, rtol=1e-6)
  assert make('t5').shared_across_layers


def test_fire_matches_formula_and_is_finite():
  enc = make('fire', causal=True)
  qpos, kpos = np.array([[0, 100, 700]]), np.array([[0, 50, 100, 700]])
  variables, bias = init_and_bias(enc, qpos, kpos)
  p = jax.tree.map(np.asarray, nn.meta.unbox(variables['params']))
  psi = lambda x: np.log(abs(p['c']) * x + 1)
  d = np.abs(qpos[0, :, None] - kpos[0, None, :])
  norm = psi(np.maximum(qpos[0], abs(p['L_multiplier']) * 512.0))[:, None] + 1e-6
  h = np.maximum((psi(d) / norm)[..., None] * p['w1'] + p['b1'], 0)
  np.testing.assert_allclose(bias[0], np.moveaxis(h @ p['w2'], -1, 0),
                             rtol=1e-5, atol=1e-6)


def test_learned_params_receive_gradients():
  qpos, kpos = jnp.arange(0, 64, 3)[None], jnp.arange(100)[None]
  target = jax.random.normal(jax.random.key(1), (1, 4, qpos.shape[1], 100))

  def grads(name):
    enc = make(name, causal=False)
    variables = enc.init(jax.random.key(0), None, None, qpos, kpos, None, None, method='bias')
    loss = lambda v: jnp.sum((bias_fn(enc)(v, qpos, kpos) - target) ** 2)
    return jax.grad(loss)(variables)['params']
  out = nn.meta.unbox(jax.jit(lambda: {name: grads(name) for name in LEARNED})())
  for path, g in jax.tree_util.tree_leaves_with_path(out):
    assert np.isfinite(g).all() and np.abs(g).max() > 0, path
  assert set(out['fire']) == {'c', 'L_multiplier', 'w1', 'b1', 'w2'}


def test_long_positions_are_finite():
  far = 1_000_000
  qpos = jnp.array([[0, far // 2, far - 1, far]])
  kpos = jnp.array([[0, 1, far - 2, far]])

  def bias_and_grads(name, causal):
    enc = make(name, causal)
    variables = enc.init(jax.random.key(0), None, None, qpos, kpos, None, None, method='bias')
    bias = bias_fn(enc)(variables, qpos, kpos)
    return bias, jax.grad(lambda v: bias_fn(enc)(v, qpos, kpos).sum())(variables)
  out = jax.jit(lambda: {(n, c): bias_and_grads(n, c) for n in BIASES
                         for c in (True, False)})()
  for path, x in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(out)):
    assert np.isfinite(x).all(), path


@pytest.mark.parametrize('name,args,field', [
    ('t5', {'num_buckets': 1}, 'num_buckets'),
    ('t5', {'num_buckets': 0}, 'num_buckets'),
    ('t5', {'max_distance': 0}, 'max_distance'),
    ('t5', {'num_buckets': 32, 'max_distance': 8}, 'max_distance'),
    ('t5', {'table_scale': 0.0}, 'table_scale'),
    ('fire', {'mlp_width': 0}, 'mlp_width'),
    ('fire', {'init_c': 0.0}, 'init_c'),
    ('fire', {'init_L': -1.0}, 'init_L'),
])
def test_bad_hyperparameters_raise(name, args, field):
  with pytest.raises(ValueError, match=rf'model\.posenc_args\.{field}\b'):
    make(name, **args)


def test_t5_encoder_needs_four_buckets():
  make('t5', causal=True, num_buckets=2)
  with pytest.raises(ValueError, match=r'model\.posenc_args\.num_buckets'):
    make('t5', causal=False, num_buckets=2)
  with pytest.raises(ValueError):
    rb.t5_relative_position_bucket(jnp.arange(3), bidirectional=True, num_buckets=2)
  with pytest.raises(ValueError):
    rb.alibi_slopes(0)


IN_KERNEL = tuple(n for n in BIASES if registry.get(n).bias_in_kernel)


def test_in_kernel_bias_is_one_head_of_the_full_bias():
  """Under ``in_kernel(h)`` a hook gives head h alone (``per_head``, ``lookup``,
  ``scalar_mlp`` without gathers or rank-4 matmuls), equal to head h of the full
  bias, for decoder and encoder, with random (not initial) parameters."""
  from posjax.encodings.base import in_kernel
  assert set(IN_KERNEL) == {'alibi', 't5', 'kerple_log', 'kerple_power', 'fire'}
  qpos = jnp.asarray([[0, 3, 7, 200], [5, 6, 7, 8]], jnp.int32)
  kpos = jnp.asarray([[0, 1, 2, 3, 150], [1, 4, 9, 16, 300]], jnp.int32)

  def head_biases(enc, variables):
    def one(h):  # A traced head, as the kernels trace it.
      with in_kernel(h):
        return bias_fn(enc)(variables, qpos, kpos)
    return jax.jit(lambda: (bias_fn(enc)(variables, qpos, kpos),
                            jax.vmap(one)(jnp.arange(4, dtype=jnp.int32))))()

  for name in IN_KERNEL:
    for causal in (True, False):
      enc = make(name, causal)
      variables, _ = init_and_bias(enc, qpos, kpos)
      variables = jax.tree.map(  # Away from the init, so a wrong head shows.
          lambda a: a + jax.random.normal(jax.random.key(1), a.shape), variables)
      full, heads = head_biases(enc, variables)
      assert heads.shape == (4, 2, 1, 4, 5), (name, heads.shape)
      np.testing.assert_allclose(heads[:, :, 0].transpose(1, 0, 2, 3), full, rtol=1e-5,
                                 atol=1e-5, err_msg=f'{name} causal={causal}')
