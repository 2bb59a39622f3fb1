"""PaTH attention (Yang et al. 2025): accumulated Householder transforms."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import models


def _cfg(**kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=2, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=32, posenc='path', block_size=4, attention='dense')
  return models.ModelConfig.from_config({**base, **kw})


def _params(cfg, shape, seed=0):
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


def _tokens(B=2, L=10, seed=3):
  return jax.random.randint(jax.random.key(seed), (B, L), 4, 40)


def test_attention_is_the_papers_product_of_householder_matrices():
  """A one-layer model's recorded probabilities equal numpy's softmax of
  ``q_i^T H_i ... H_{j+1} k_j / sqrt(K)`` with explicit K x K matrices ``H_t = I -
  beta_t w_t w_t^T`` built from the model's own parameters and layer input."""
  cfg = _cfg(num_layers=1, scan_layers=False)
  tokens = _tokens(1, 6)
  model, params = models.build(cfg), _params(cfg, tokens.shape)
  _, state = model.apply({'params': params}, tokens, mutable=['intermediates'],
                         capture_intermediates=True)
  inter = state['intermediates']['decoder']['layer_0']
  x = np.asarray(inter['pre_attention_norm']['__call__'][0], np.float64)[0]
  probs = np.asarray(inter['attention']['attention_probs'][0])[0]
  p = params['decoder']['layer_0']
  att, enc = p['attention'], jax.tree.map(lambda a: np.asarray(a, np.float64), p['posenc'])
  q = np.einsum('ld,dhk->lhk', x, np.asarray(att['query'], np.float64))
  k = np.einsum('ld,dhk->lhk', x, np.asarray(att['key'], np.float64))
  w = np.einsum('ld,dhk->lhk', x, enc['w_proj'])
  w = w / np.sqrt((w ** 2).sum(-1, keepdims=True) + 1e-6)
  beta = 2 / (1 + np.exp(-(x @ enc['beta_w'] + enc['beta_b'])))
  L, H, K = q.shape
  for h in range(H):
    logits = np.full((L, L), -np.inf)
    for i in range(L):
      for j in range(i + 1):
        m = np.eye(K)
        for t in range(i, j, -1):  # H_i H_{i-1} ... H_{j+1}
          m = m @ (np.eye(K) - beta[t, h] * np.outer(w[t, h], w[t, h]))
        logits[i, j] = q[i, h] @ m @ k[j, h] / np.sqrt(K)
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs[h], want / want.sum(1, keepdims=True), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize('attention', [pytest.param('blockwise', marks=pytest.mark.slow),
                                       'flash'])  # (Flash replays blockwise's carries.)
def test_implementations_equal_dense_in_values_and_gradients(attention):
  tokens = _tokens()
  dense = _cfg()
  params = _params(dense, tokens.shape)

  def loss(cfg, p):
    out = models.build(cfg).apply({'params': p}, tokens)
    return (out ** 2).mean(), out
  grad = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))  # noqa: E731
  (_, od), gd = grad(dense)(params)
  (_, oi), gi = grad(dense.replace(attention=attention))(params)
  np.testing.assert_allclose(oi, od, rtol=2e-5, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gd, gi)
  assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(gd))


def test_cached_decoding_equals_full_pass_and_packing_separates():
  cfg = _cfg()
  B, L = 2, 10
  tokens = _tokens(B, L)
  model, params = models.build(cfg), _params(cfg, (B, L))
  apply = jax.jit(model.apply)
  full = apply({'params': params}, tokens)
  cache = models.init_cache(model, params, B, L)
  step = jax.jit(functools.partial(models.decode_step, model))
  pos = jnp.broadcast_to(jnp.arange(L), (B, L))
  logits, cache = step(params, cache, tokens[:, :4], pos[:, :4])
  steps = [logits]
  for i in range(4, L):
    logits, cache = step(params, cache, tokens[:, i:i + 1], pos[:, i:i + 1])
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-4, atol=1e-4)
  docs = tokens[:, :5]
  packed = jnp.stack([jnp.concatenate([docs[0], docs[1]])] * 2)
  seg = jnp.array([[1] * 5 + [2] * 5] * 2)
  out = apply({'params': params}, packed, jnp.array([list(range(5)) * 2] * 2), seg)
  np.testing.assert_allclose(out[0, 5:], apply({'params': params}, docs)[1], rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match=r'^model\.kind: an encoder .* posenc=path'):
    _cfg(kind='encoder_classifier')
