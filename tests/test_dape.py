"""DAPE (posjax.encodings.dape) against a numpy transcription of the paper's
equation, its reduction to the base bias, its bases, errors and gradients."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.encodings import dape

H, K = 2, 8


def _enc(base='alibi', causal=True, **args):
  return encodings.make('dape', {'base_posenc': base, **args}, num_heads=H, head_dim=K,
                        model_dim=H * K, max_len=32, causal=causal)


def _inputs(B=2, L=5, S=7, seed=0):
  """q ``[B, L, H, K]``, k ``[B, S, H, K]``, positions (queries after the keys
  begin, as in cached decoding) and the causal mask."""
  kq, kk = jax.random.split(jax.random.key(seed))
  q = 2. * jax.random.normal(kq, (B, L, H, K))
  k = 2. * jax.random.normal(kk, (B, S, H, K))
  qpos = jnp.broadcast_to(jnp.arange(S - L, S, dtype=jnp.int32), (B, L))
  kpos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  return q, k, qpos, kpos, qpos[:, :, None] >= kpos[:, None, :]


def _variables(enc, q, k, qpos, kpos, mask, seed=1):
  """Initial variables moved away from the init (so a swapped row or head shows)."""
  v = jax.jit(lambda: enc.init(jax.random.key(0), q, k, qpos, kpos, mask, None,
                               method='bias'))()
  leaves, tree = jax.tree.flatten(nn.unbox(v))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.5 * jax.random.normal(r, a.shape)
                                   for a, r in zip(leaves, keys)])


def _bias(enc, v, *args):
  return jax.jit(lambda v: enc.apply(v, *args, None, method='bias')[0])(v)


def _leaky(x):
  return np.where(x > 0, x, 0.01 * x)


def _paper(logits_BxHxLxS, base_BxHxLxS, p):
  """Zheng et al. 2024, Eq. 2 with the reference's residual: A + B + f([A, B]),
  f = Linear(2H, W) -> LeakyReLU(0.01) -> Linear(W, H) (no output bias here),
  on the heads of each (i, j); numpy float64."""
  x_BxLxSx2H = np.concatenate([logits_BxHxLxS, base_BxHxLxS], 1).transpose(0, 2, 3, 1)
  f_BxLxSxH = _leaky(x_BxLxSx2H @ p['w1'] + p['b1']) @ p['w2']
  return logits_BxHxLxS + base_BxHxLxS + f_BxLxSxH.transpose(0, 3, 1, 2)


def test_bias_is_the_papers_equation():
  """Compared: A + ``bias`` (A = q.k / sqrt(K) in numpy) against the numpy
  transcription of A + B + f([A, B]) with ALiBi's B = -slope_h |j - i| (slopes
  1/16, 1/256 for two heads) and given random parameters, on the allowed pairs."""
  q, k, qpos, kpos, mask = _inputs()
  enc = _enc()
  v = _variables(enc, q, k, qpos, kpos, mask)
  got = np.asarray(_bias(enc, v, q, k, qpos, kpos, mask), np.float64)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v['params'])
  a = np.einsum('blhk,bshk->bhls', np.asarray(q, np.float64), np.asarray(k, np.float64))
  a /= np.sqrt(K)
  dist = np.abs(np.asarray(kpos)[:, None, None, :] - np.asarray(qpos)[:, None, :, None])
  b = -np.array([2. ** -4, 2. ** -8])[None, :, None, None] * dist
  keep = np.broadcast_to(np.asarray(mask)[:, None], got.shape)
  np.testing.assert_allclose((a + got)[keep], _paper(a, b, p)[keep], rtol=1e-5, atol=1e-5)
  assert np.isfinite(got).all()


def test_attention_of_a_decoder_layer_is_the_papers_softmax():
  """Compared: a one-layer decoder's attention probabilities (dense, sown)
  against softmax(A + B + f([A, B])) in numpy from its parameters: A is the
  scaled logit the attention itself uses."""
  cfg = models.ModelConfig.from_config(dict(
      kind='decoder', vocab_size=40, num_layers=1, num_heads=H, model_dim=H * K, mlp_dim=32,
      max_len=32, posenc='dape', norm='rmsnorm', scan_layers=False, attention='dense'))
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 4, 40)
  model = models.build(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), tokens)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                        nn.unbox(shapes['params']))
  _, state = jax.jit(lambda p: model.apply({'params': p}, tokens, mutable=['intermediates']))(
      params)
  got = np.asarray(jax.tree.leaves(state['intermediates'])[0])
  P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)['decoder']
  x = P['embedding']['embedding'][np.asarray(tokens)]
  h = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * P['layer_0'][
      'pre_attention_norm']['scale']
  att = P['layer_0']['attention']
  q, k = (np.einsum('bld,dhk->blhk', h, att[n]) for n in ('query', 'key'))
  a = np.einsum('blhk,bshk->bhls', q, k) / np.sqrt(K)
  dist = np.abs(np.arange(9)[None, :] - np.arange(9)[:, None])
  b = np.broadcast_to(-np.array([2. ** -4, 2. ** -8])[:, None, None] * dist, a.shape)
  logits = np.where(np.tril(np.ones((9, 9), bool)), _paper(a, b, P['layer_0']['posenc']), -np.inf)
  want = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(got, want / want.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('base,args', [('alibi', {}), ('t5', {'num_buckets': 8}),
                                       ('kerple_log', {}), ('fire', {})])
def test_zero_output_layer_is_the_base_bias(base, args):
  """Compared: DAPE's bias with W2 = 0 against the base encoding's own bias, built
  alone with the same arguments and DAPE's ``base`` parameters: equal exactly."""
  q, k, qpos, kpos, mask = _inputs()
  enc = _enc(base, base_args=args)
  v = _variables(enc, q, k, qpos, kpos, mask)
  v = {'params': {**v['params'], 'w2': jnp.zeros_like(v['params']['w2'])}}
  alone = encodings.make(base, args, num_heads=H, head_dim=K, model_dim=H * K, max_len=32,
                         causal=True)
  want = _bias(alone, {'params': v['params'].get('base', {})}, q, k, qpos, kpos, mask)
  np.testing.assert_array_equal(_bias(enc, v, q, k, qpos, kpos, mask), want)


def _cfg(base, args=None, **kw):
  posenc_args = {'base_posenc': base, **({'base_args': args} if args else {})}
  return models.ModelConfig.from_config({**dict(
      kind='decoder', vocab_size=40, num_layers=1, num_heads=H, model_dim=H * K, mlp_dim=32,
      max_len=32, posenc='dape', posenc_args=posenc_args, block_size=4), **kw})


@functools.lru_cache(maxsize=None)
def _random_params(cfg, shape):
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


@pytest.mark.parametrize('base,args', [('alibi', None), ('t5', {'num_buckets': 16}),
                                       ('kerple_log', None), ('cope', {'npos_max': 8})])
def test_bases_train_inside_a_decoder(base, args):
  """Through the model config (``base_args`` nested in ``posenc_args``): every
  parameter, DAPE's MLP and the base's own (T5's table, KERPLE's r1 / r2, CoPE's
  E), gets a gradient; blockwise attention equals dense in values and gradients."""
  cfg = _cfg(base, args)
  tokens = jax.random.randint(jax.random.key(3), (2, 10), 4, 40)
  params = _random_params(cfg, tokens.shape)
  enc_params = params['decoder']['layers']['posenc']
  assert {'w1', 'b1', 'w2'} <= set(enc_params)
  assert ('base' in enc_params) == encodings.get(base).has_params

  def grads(c):
    model = models.build(c)
    loss = lambda p: model.apply({'params': p}, tokens).std()  # noqa: E731
    return jax.jit(jax.value_and_grad(loss))(params)
  (ld, gd), (lb, gb) = grads(cfg), grads(cfg.replace(attention='blockwise'))
  for path, g in jax.tree_util.tree_leaves_with_path(gd):
    assert np.isfinite(g).all() and np.abs(g).max() > 0, jax.tree_util.keystr(path)
  np.testing.assert_allclose(lb, ld, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5), gd, gb)


def test_translation_invariance_follows_the_base():
  """The class declares its default base's invariance (ALiBi); FIRE's bias reads
  the query position, so DAPE over FIRE is not invariant."""
  tokens = jax.random.randint(jax.random.key(3), (2, 10), 4, 40)
  pos = jnp.broadcast_to(jnp.arange(10), tokens.shape)
  outs = {}
  for base in ('alibi', 'fire'):
    cfg = _cfg(base)
    model, params = models.build(cfg), _random_params(cfg, tokens.shape)
    apply = jax.jit(model.apply)
    outs[base] = [apply({'params': params}, tokens, pos + s) for s in (0, 1000)]
  assert encodings.get('dape').translation_invariant
  np.testing.assert_allclose(*outs['alibi'], rtol=1e-4, atol=1e-4)
  assert not np.allclose(*outs['fire'], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('args,match', [
    ({'base_posenc': 'rope'}, r"base_posenc: got 'rope'; allowed: a bias-only encoding: "
                              r"alibi, .*\bt5\b"),
    ({'base_posenc': 'dape'}, r"base_posenc: got 'dape'; allowed: .*alibi"),
    ({'base_posenc': 'shaw'}, r"base_posenc: got 'shaw'"),
    ({'base_posenc': 'learned'}, r"base_posenc: got 'learned'"),
    ({'base_posenc': 'nope'}, r"base_posenc: got 'nope'"),
    ({'base_posenc': 't5', 'base_args': {'num_buckets': 1}}, r'base_args\.num_buckets: got 1'),
    ({'base_args': {'bogus': 1}}, r"base_args: unknown field\(s\) bogus for 'alibi'"),
    ({'mlp_width': 0}, r'mlp_width: got 0; allowed: an integer >= 1'),
])
def test_bad_arguments_are_one_line_errors(args, match):
  with pytest.raises(ValueError, match=r'^model\.posenc_args\.' + match) as e:
    models.ModelConfig.from_config(dict(posenc='dape', posenc_args=args))
  assert '\n' not in str(e.value)


def test_allowed_bases_are_the_bias_only_encodings():
  want = {n for n in encodings.names() if encodings.get(n).acts_at == (encodings.BIAS,)}
  assert set(dape.allowed_bases()) == want - {'dape'}
  assert {'alibi', 't5', 'kerple_log', 'fire'} <= set(dape.allowed_bases())
