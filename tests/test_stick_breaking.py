"""Stick-breaking attention (Tan et al. 2025): ``model.normalizer='stick_breaking'``."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.models import attention
from posjax.models.kernels import blockwise, stick_breaking, vendor
from posjax.models.kernels.span import Span


def _cfg(posenc='none', **kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=1, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=32, posenc=posenc, block_size=4,
              normalizer='stick_breaking')
  return models.ModelConfig.from_config({**base, **kw})


def _params(cfg, shape, seed=0):
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


def _tokens(B=2, L=10, seed=3):
  return jax.random.randint(jax.random.key(seed), (B, L), 4, 40)


def _numpy_weights(z, mask):
  """The paper's definition, one query and key at a time, float64."""
  beta = 1 / (1 + np.exp(-z)) * mask[:, None]
  a = np.zeros_like(beta)
  for i in range(z.shape[2]):
    left = np.ones(z.shape[:2])
    for j in reversed(range(z.shape[3])):
      a[:, :, i, j] = beta[:, :, i, j] * left
      left = left * (1 - beta[:, :, i, j])
  return a


@pytest.mark.parametrize('attend_current', [False, True])
def test_weights_are_the_papers_product_and_blockwise_equals_them(attend_current):
  """Dense and blockwise (blocks of 3 over 8 keys, visited last to first) give the
  weights of the paper's definition (numpy loops) over the keys before the query (the
  first query has none), or with ``attend_current`` over those and its own key (the
  first query keeps sigmoid(z_00) of its stick)."""
  B, L, H, K = 2, 8, 3, 4
  q, k, v = (jax.random.normal(jax.random.key(s), (B, L, H, K)) for s in range(3))
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  seg = jnp.ones((B, L), jnp.int32)
  enc = encodings.make('none', {}, num_heads=H, head_dim=K, model_dim=H * K)
  args = (enc, q, k, v, pos, pos, pos, pos, seg, seg)
  span = Span(causal=True, exclude_current=not attend_current)
  dense, a = blockwise.attend(*args, span=span, block_size=None, scale=0.5,
                              normalizer='stick_breaking')
  z = np.einsum('blhk,bshk->bhls', q, k) * 0.5
  mask = np.tril(np.ones((L, L)), 0 if attend_current else -1)[None].repeat(B, 0)
  want = _numpy_weights(z, mask)
  np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
  first = 1 / (1 + np.exp(-z[:, :, 0, 0])) if attend_current else 0 * z[:, :, 0, 0]
  np.testing.assert_allclose(a[:, :, 0, 0], first, rtol=1e-5)
  assert (want.sum(-1) <= 1 + 1e-9).all()
  np.testing.assert_allclose(dense, np.einsum('bhls,bshk->blhk', want, v), rtol=1e-4, atol=1e-5)
  ref, _ = stick_breaking.reference(jnp.asarray(z), jnp.asarray(mask, bool), v)
  np.testing.assert_allclose(dense, ref, rtol=1e-4, atol=1e-5)
  blocked, _ = blockwise.attend(*args, span=span, block_size=3, scale=0.5,
                                normalizer='stick_breaking')
  np.testing.assert_allclose(blocked, dense, rtol=1e-5, atol=1e-6)


# One case per hook by default (none with a window, bias, carry, values, tokens);
# every pair with --runslow.
FAST = {('blockwise', 'cope'), ('flash', 'none'), ('flash', 'alibi'), ('flash', 'shaw'),
        ('flash', 'fox')}


@pytest.mark.parametrize('impl,posenc', [
    pytest.param(i, p, marks=() if (i, p) in FAST else pytest.mark.slow)
    for i in ('blockwise', 'flash') for p in ('none', 'alibi', 'cope', 'shaw', 'fox')])
def test_tiled_equals_dense_in_values_and_gradients(impl, posenc):
  """Blockwise and flash (tiles of 4 over 10 tokens) with the encodings' bias, carry,
  value and token hooks (a window of 6 on one case, the query's own key on another)."""
  tokens = _tokens()
  kw = {'none': {'window': 6}, 'shaw': {'attend_current': True}}.get(posenc, {})
  dense = _cfg(posenc, attention='dense', **kw)
  params = _params(dense, tokens.shape)

  def loss(cfg, p):
    out = models.build(cfg).apply({'params': p}, tokens)
    return (out ** 2).mean(), out
  grad = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))  # noqa: E731
  (_, od), gd = grad(dense)(params)
  (_, ob), gb = grad(dense.replace(attention=impl))(params)
  np.testing.assert_allclose(ob, od, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gd, gb)
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(gd))


@pytest.mark.parametrize('impl,kw', [('dense', {}), ('dense', {'window': 4}),
                                     ('flash', {'window': 4})],
                         ids=['full-cache', 'rolling-cache', 'flash-rolling-cache'])
def test_cached_decoding_equals_full_pass(impl, kw):
  cfg = _cfg('rope', attention=impl, **kw)
  B, L = 2, 10
  tokens = _tokens(B, L)
  model, params = models.build(cfg), _params(cfg, (B, L))
  full = jax.jit(model.apply)({'params': params}, tokens)
  cache = models.init_cache(model, params, B, L)
  step = jax.jit(functools.partial(models.decode_step, model))
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  logits, cache = step(params, cache, tokens[:, :4], pos[:, :4])
  steps = [logits]
  for i in range(4, L):
    logits, cache = step(params, cache, tokens[:, i:i + 1], pos[:, i:i + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)
  softmax = models.build(cfg.replace(normalizer='softmax')).apply({'params': params}, tokens)
  assert not np.allclose(full, softmax, atol=1e-3)


def test_packed_documents_stay_separate():
  cfg = _cfg('alibi', attention='blockwise')
  docs = _tokens(2, 6, seed=5)
  model, params = models.build(cfg), _params(cfg, docs.shape)
  apply = jax.jit(model.apply)
  separate = apply({'params': params}, docs)
  packed = jnp.stack([jnp.concatenate([docs[0], docs[1]])] * 2)
  seg = jnp.array([[1] * 6 + [2] * 6] * 2)
  pos = jnp.array([list(range(6)) * 2] * 2)
  out = apply({'params': params}, packed, pos, seg)
  np.testing.assert_allclose(out[0, :6], separate[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[0, 6:], separate[1], rtol=1e-5, atol=1e-5)


def test_auto_takes_flash_above_the_dense_limit_and_kernels_are_refused():
  cfg = _cfg()
  assert attention.choose(cfg, 64, 64) == 'dense'
  assert attention.choose(cfg, 4096, 4096) == 'flash'
  assert 'softmax only' in vendor.why_not('cudnn', cfg)
  with pytest.raises(ValueError, match=r"^model\.attention: got 'pallas'; allowed: auto, dense, "
                                       r'blockwise, flash with normalizer=stick_breaking$'):
    _cfg(attention='pallas')
  with pytest.raises(ValueError, match=r"^model\.sinks: got 'learned'; allowed: 'none'"):
    _cfg(sinks='learned')
  with pytest.raises(ValueError, match=r"^model\.normalizer: got 'sparsemax'; allowed: softmax, "
                                       r'stick_breaking$'):
    _cfg(normalizer='sparsemax')
  with pytest.raises(ValueError, match=r"^model\.attend_current: got True; allowed: False with "
                                       r'normalizer=softmax'):
    _cfg(normalizer='softmax', attend_current=True)
  assert cfg.span.exclude_current and not _cfg(attend_current=True).span.exclude_current


def test_flash_holds_no_full_length_logits():
  """Linear memory: the compiled flash gradient has no [L, S] array (tiles of 32 over
  96 tokens), where dense has one."""
  L = 96
  tokens = _tokens(1, L)
  pos, seg = jnp.arange(L)[None], jnp.ones((1, L), jnp.int32)

  def hlo(impl):
    cfg = _cfg('alibi', attention=impl, block_size=32, max_len=L)
    model = models.build(cfg)
    grad = jax.grad(lambda p: (model.apply({'params': p}, tokens, pos, seg) ** 2).sum())
    return jax.jit(grad).lower(_params(cfg, tokens.shape)).compile().as_text()
  full = f'f32[1,2,{L},{L}]'
  assert full in hlo('dense')
  assert full not in hlo('flash')
