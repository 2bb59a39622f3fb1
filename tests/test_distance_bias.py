"""Sandwich, the dynamic position bias and ALiBi on a subset of heads against
float64 numpy transcriptions of their reference formulas; Sandwich's shape
(zero at distance 0, decaying, translation invariant), one head in a kernel,
gradients, long positions and the one-line errors."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax.encodings import registry
from posjax.encodings import relative_bias as rb
from posjax.encodings.base import in_kernel

H = 4


def make(name, causal=True, num_heads=H, **args):
  return registry.make(name, args, num_heads=num_heads, head_dim=8, model_dim=32,
                       max_len=512, causal=causal)


def bias_fn(enc):
  return lambda v, q, k: enc.apply(v, None, None, q, k, None, None, method='bias')[0]


def init_and_bias(enc, qpos, kpos):
  """(variables, bias [B, H, L, S]) at init, jitted."""
  q, k = jnp.asarray(qpos, jnp.int32), jnp.asarray(kpos, jnp.int32)
  bias, variables = jax.jit(lambda q, k: enc.init_with_output(
      jax.random.key(0), None, None, q, k, None, None, method='bias'))(q, k)
  return variables, np.asarray(bias[0])


def numpy_params(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.meta.unbox(variables['params']))


def ref_sandwich(qpos, kpos, num_heads, d, base=10000.0, f32_freq=False):
  """NeMo's ``SandwichRelativePositionEmbedding.forward`` in float64 numpy:
  ``(sum_{i=1..d/2} cos(rel / base^(2i/d)) - d/2) / (n * 8 / H)`` for head n = 1..H,
  ``[B, H, L, S]``; ``f32_freq``: the frequencies rounded to float32 first, as
  posjax holds every sinusoid's (at 10^6 their rounding moves an angle by 0.05)."""
  rel = (kpos[:, None, :] - qpos[:, :, None]).astype(np.float64)
  inv_freq = 1.0 / base ** (2 * np.arange(1, d // 2 + 1) / d)
  if f32_freq:
    inv_freq = inv_freq.astype(np.float32).astype(np.float64)
  pe = np.cos(rel[..., None] * inv_freq).sum(-1) - d / 2
  h = np.arange(1, num_heads + 1) * 8 / num_heads
  return pe[:, None] / h[None, :, None, None]


def ref_dpb(qpos, kpos, p, log_distance):
  """The dynamic position bias's MLP on ``q - k`` (x-transformers' ``i - j``),
  float64: ``relu(x w1 + b1) @ w2``, ``[B, H, L, S]``."""
  x = (qpos[:, :, None] - kpos[:, None, :]).astype(np.float64)
  if log_distance:
    x = np.sign(x) * np.log(np.abs(x) + 1)
  hidden = np.maximum(x[..., None] * p['w1'] + p['b1'], 0)
  return np.moveaxis(hidden @ p['w2'], -1, 1)


QPOS = np.array([[0, 3, 7, 40], [200, 5, 9, 1_000_000]])
KPOS = np.array([[0, 1, 2, 90, 300], [7, 200, 0, 400, 999_000]])


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('args,d,base', [({}, 8, 1e4), ({'dim': 128}, 128, 1e4),
                                         ({'dim': 32, 'base': 500.0}, 32, 500.0)])
def test_sandwich_matches_the_reference_formula(causal, args, d, base):
  """Every entry of the bias against ``ref_sandwich``: distances up to 10^6 with
  the float32 frequencies (exact angles, ``cos_sin``), and those below 1000 (the
  first row) with the float64 ones too. ``dim`` defaults to the head dim (8), as
  NeMo's kv_channels."""
  _, bias = init_and_bias(make('sandwich', causal, **args), QPOS, KPOS)
  assert bias.shape == (2, H, 4, 5) and bias.dtype == np.float32
  np.testing.assert_allclose(bias, ref_sandwich(QPOS, KPOS, H, d, base, f32_freq=True),
                             rtol=1e-5, atol=2e-6 * d)
  np.testing.assert_allclose(bias[:1], ref_sandwich(QPOS, KPOS, H, d, base)[:1], rtol=1e-5,
                             atol=2e-6 * d)


@pytest.mark.parametrize('dim,monotone_to', [(None, 32), (128, 13)])
def test_sandwich_is_zero_at_distance_zero_and_decays(dim, monotone_to):
  """From a query at 3000 over keys 0..6000: 0 at distance 0 and below 0 elsewhere,
  the same on both sides, strictly decreasing over the first distances (the
  sum's high frequencies ripple beyond: 32 at d = 8, 13 at d = 128, numpy's
  float64 ``ref_sandwich`` agrees) and, on average, far below them at the far end."""
  args = {} if dim is None else {'dim': dim}
  for causal in (True, False):
    _, bias = init_and_bias(make('sandwich', causal, **args), [[3000]], [np.arange(6001)])
    row = bias[0, :, 0]  # [H, S]
    past, future = row[:, 3000::-1], row[:, 3000:]
    np.testing.assert_array_equal(past, future)
    assert (past[:, 0] == 0).all() and (past[:, 1:] < 0).all()
    assert (np.diff(past[:, :monotone_to + 1], axis=-1) < 0).all()
    assert (past[:, -1000:].mean(-1) < 2 * past[:, :monotone_to + 1].mean(-1)).all()
    # Heads scale as 1 / n: head n's bias is head 1's divided by n.
    np.testing.assert_allclose(past[:, 1:] * np.arange(1, H + 1)[:, None],
                               np.broadcast_to(past[:1, 1:], past[:, 1:].shape), rtol=1e-5)


@pytest.mark.parametrize('name', ['sandwich', 'dynamic_position_bias'])
def test_bias_depends_only_on_the_offset(name):
  shifts = np.array([0, 1, 977, 123_456]).repeat(2)[:, None]
  q = np.tile(QPOS % 1000, (4, 1)) + shifts
  k = np.tile(KPOS % 1000, (4, 1)) + shifts
  for causal in (True, False):
    _, bias = init_and_bias(make(name, causal), q, k)
    for shifted in np.split(bias, 4)[1:]:
      np.testing.assert_allclose(shifted, bias[:2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('log_distance', [False, True])
def test_dynamic_position_bias_is_the_mlp_of_the_distance(causal, log_distance):
  """Each head's bias equals ``ref_dpb`` with the module's parameters (at init,
  PyTorch's Linear init, and random ones); signed, so an encoder's keys before
  and after the query differ."""
  enc = make('dynamic_position_bias', causal, log_distance=log_distance)
  q, k = np.array([[0, 3, 7, 40]]), np.array([[0, 1, 2, 5, 9, 90]])
  variables, bias = init_and_bias(enc, q, k)
  p = numpy_params(variables)
  assert p['w1'].shape == p['b1'].shape == (8,) and p['w2'].shape == (8, H)  # 32 // 4.
  assert np.abs(p['w1']).max() <= 1 and np.abs(p['w2']).max() <= 1 / math.sqrt(8)
  np.testing.assert_allclose(bias[0], ref_dpb(q, k, p, log_distance)[0], rtol=1e-5, atol=1e-5)
  variables = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(1), a.shape),
                           variables)
  got = jax.jit(bias_fn(enc))(variables, q, k)
  want = ref_dpb(q, k, numpy_params(variables), log_distance)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Query 3 sees keys 1 and 5 at q - k = +2 and -2: different inputs to the MLP.
  assert not np.allclose(want[0, :, 1, 1], want[0, :, 1, 3])


def test_dynamic_position_bias_width_and_sharing():
  enc = make('dynamic_position_bias', mlp_width=5)
  variables, _ = init_and_bias(enc, [[0]], [[0]])
  assert numpy_params(variables)['w2'].shape == (5, H)
  assert set(variables['params']) == {'w1', 'b1', 'w2'}
  assert registry.get('dynamic_position_bias').shared_across_layers
  assert not registry.get('sandwich').has_params


@pytest.mark.parametrize('num_heads,subset', [(8, 3), (8, 8), (4, 1), (12, 4)])
def test_alibi_on_a_subset_of_heads(num_heads, subset):
  """The first ``subset`` heads are ALiBi with ``alibi_slopes(subset)`` (the slopes
  of a ``subset``-head model, x-transformers' ``alibi_num_heads``), the rest 0."""
  q, k = np.array([[0, 5, 9]]), np.arange(12)[None]
  _, bias = init_and_bias(make('alibi', False, num_heads, num_alibi_heads=subset), q, k)
  dist = np.abs(k[0][None, :] - q[0][:, None]).astype(np.float64)
  want = -np.asarray(rb.alibi_slopes(subset), np.float64)[:, None, None] * dist
  np.testing.assert_allclose(bias[0, :subset], want, rtol=1e-6)
  assert (bias[0, subset:] == 0).all()
  _, every = init_and_bias(make('alibi', False, num_heads), q, k)
  if subset == num_heads:
    np.testing.assert_array_equal(bias, every)


IN_KERNEL = (('sandwich', {}), ('sandwich', {'dim': 64}), ('dynamic_position_bias', {}),
             ('dynamic_position_bias', {'log_distance': True}), ('alibi', {'num_alibi_heads': 3}))


def test_in_kernel_bias_is_one_head_of_the_full_bias():
  """Under ``in_kernel(h)`` (a traced head, as the kernels trace it) each bias is
  head h of the full one, decoder and encoder, with random parameters."""
  qpos = jnp.asarray([[0, 3, 7, 200], [5, 6, 7, 8]], jnp.int32)
  kpos = jnp.asarray([[0, 1, 2, 3, 150], [1, 4, 9, 16, 300]], jnp.int32)

  def head_biases(enc, variables):
    def one(h):
      with in_kernel(h):
        return bias_fn(enc)(variables, qpos, kpos)
    return jax.jit(lambda: (bias_fn(enc)(variables, qpos, kpos),
                            jax.vmap(one)(jnp.arange(H, dtype=jnp.int32))))()

  for name, args in IN_KERNEL:
    for causal in (True, False):
      enc = make(name, causal, **args)
      variables, _ = init_and_bias(enc, qpos, kpos)
      variables = jax.tree.map(
          lambda a: a + jax.random.normal(jax.random.key(1), a.shape), variables)
      full, heads = head_biases(enc, variables)
      assert heads.shape == (H, 2, 1, 4, 5), (name, heads.shape)
      np.testing.assert_allclose(heads[:, :, 0].transpose(1, 0, 2, 3), full, rtol=1e-5,
                                 atol=1e-5, err_msg=f'{name} {args} causal={causal}')


def test_dynamic_position_bias_gradients_and_long_positions():
  far = 1_000_000
  qpos, kpos = jnp.array([[0, far // 2, far - 1, far]]), jnp.array([[0, 1, far - 2, far]])
  for log_distance in (False, True):
    enc = make('dynamic_position_bias', False, log_distance=log_distance)
    variables = enc.init(jax.random.key(0), None, None, qpos, kpos, None, None, method='bias')
    bias, grads = jax.jit(jax.value_and_grad(
        lambda v: (bias_fn(enc)(v, qpos, kpos) ** 2).mean()))(variables)
    assert np.isfinite(bias)
    for path, g in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(grads)):
      assert np.isfinite(g).all() and np.abs(g).max() > 0, path


@pytest.mark.parametrize('name,args,field', [
    ('sandwich', {'dim': 7}, 'dim'),
    ('sandwich', {'dim': 0}, 'dim'),
    ('sandwich', {'base': 1.0}, 'base'),
    ('dynamic_position_bias', {'mlp_width': 0}, 'mlp_width'),
    ('dynamic_position_bias', {'log_distance': 'yes'}, 'log_distance'),
    ('alibi', {'num_alibi_heads': 0}, 'num_alibi_heads'),
    ('alibi', {'num_alibi_heads': H + 1}, 'num_alibi_heads'),
    ('alibi', {'num_alibi_heads': 2.0}, 'num_alibi_heads'),
])
def test_bad_hyperparameters_raise_one_line_errors(name, args, field):
  with pytest.raises(ValueError, match=rf'model\.posenc_args\.{field}\b') as e:
    make(name, **args)
  assert '\n' not in str(e.value) and 'allowed' in str(e.value)


# The Pallas kernels compute these biases in-kernel; the model spec
# (tests/test_models.py) runs them dense and blockwise only. Mosaic's grid walk
# by default, Triton's loop walk (~14 s each) with --runslow.
PALLAS = [pytest.param(name, args, grid, id=f'{name}{"-" + str(args) if args else ""}-'
                       f'{"grid" if grid else "loop"}', marks=() if grid else pytest.mark.slow)
          for name, args in (('sandwich', {}), ('dynamic_position_bias', {'log_distance': True}),
                             ('alibi', {'num_alibi_heads': 1}))
          for grid in (False, True)]


@pytest.mark.parametrize('name,args,grid', PALLAS)
def test_pallas_kernels_equal_dense(name, args, grid, monkeypatch):
  """Values and gradients (dq, dk, dv and the MLP's) of a one-layer decoder on
  packed rows, tiles of 4, in Pallas interpret mode, against dense attention:
  inner tiles in a loop (Triton's walk) and as a grid axis (Mosaic's)."""
  from test_flash import _close, _loss_and_grads
  from test_models import _cfg, _params
  from posjax.models.kernels import pallas_tiles
  from posjax.training import validation
  monkeypatch.setattr(pallas_tiles, 'GRID', grid)
  monkeypatch.setenv('POSJAX_EMULATE_KERNELS', '1')
  cfg = _cfg(name, num_layers=1, block_size=4, posenc_args=args)
  validation._check_attention(cfg.replace(attention='pallas'))
  tokens = jax.random.randint(jax.random.key(3), (2, 13), 4, 40)
  pos = jnp.asarray([list(range(13)), list(range(6)) + list(range(7))], jnp.int32)
  seg = jnp.asarray([[1] * 13, [1] * 6 + [2] * 7], jnp.int32)
  params = _params(cfg, tokens.shape, 0)
  ld, gd = _loss_and_grads(cfg, params, tokens, pos, seg)
  lp, gp = _loss_and_grads(cfg.replace(attention='pallas'), params, tokens, pos, seg)
  _close(ld, lp)
  jax.tree.map(_close, gd, gp)


@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_alibi_on_a_subset_of_heads_lowers(platform, monkeypatch):
  from test_lowering import TRITON, _lowered
  from posjax.models.kernels import pallas_tiles
  if platform == 'tpu':
    from jax._src.pallas.mosaic import tpu_info  # (Private, as tests/test_lowering.py.)
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                        lambda: tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5P, 1))
  monkeypatch.setattr(pallas_tiles, 'PLATFORM', platform)
  lowered = _lowered('alibi', 'pallas', {'gpu': 'cuda', 'tpu': 'tpu'}[platform],
                     num_alibi_heads=2)
  assert lowered.count({'gpu': TRITON, 'tpu': 'tpu_custom_call'}[platform]) >= 3
