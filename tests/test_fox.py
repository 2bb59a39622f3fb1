"""FoX (Lin et al. 2025): the forget-gate bias through the ``tokens`` hook."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import models


def _cfg(**kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=2, num_heads=2, model_dim=32,
              mlp_dim=64, max_len=32, posenc='fox', block_size=4, attention='dense')
  return models.ModelConfig.from_config({**base, **kw})


def _params(cfg, shape, seed=0):
  shapes = jax.eval_shape(models.build(cfg).init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                      nn.unbox(shapes['params']))


def _tokens(B=2, L=10, seed=3):
  return jax.random.randint(jax.random.key(seed), (B, L), 4, 40)


def test_attention_is_the_papers_softmax_with_forget_gates():
  """A one-layer model's recorded probabilities equal numpy's ``softmax(q.k/sqrt(K) +
  D)``, ``D_ij = sum_{l=j+1..i} log sigmoid(w . x_l + b)``, from its own parameters and
  the layer's normalised input (captured with ``capture_intermediates``)."""
  cfg = _cfg(num_layers=1, scan_layers=False)
  tokens = _tokens(1, 7)
  model, params = models.build(cfg), _params(cfg, tokens.shape)
  _, state = model.apply({'params': params}, tokens, mutable=['intermediates'],
                         capture_intermediates=True)
  inter = state['intermediates']['decoder']['layer_0']
  x = np.asarray(inter['pre_attention_norm']['__call__'][0], np.float64)[0]
  probs = np.asarray(inter['attention']['attention_probs'][0])[0]
  p = params['decoder']['layer_0']
  att, enc = p['attention'], p['posenc']
  q = np.einsum('ld,dhk->lhk', x, np.asarray(att['query'], np.float64))
  k = np.einsum('ld,dhk->lhk', x, np.asarray(att['key'], np.float64))
  log_f = -np.log1p(np.exp(-(x @ np.asarray(enc['fgate_w'], np.float64) + enc['fgate_b'])))
  L, H, K = q.shape
  for h in range(H):
    logits = np.full((L, L), -np.inf)
    for i in range(L):
      for j in range(i + 1):
        logits[i, j] = q[i, h] @ k[j, h] / np.sqrt(K) + log_f[j + 1:i + 1, h].sum()
    want = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs[h], want / want.sum(1, keepdims=True), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize('attention', [pytest.param('blockwise', marks=pytest.mark.slow),
                                       'flash'])  # (Flash replays blockwise's carries.)
def test_implementations_equal_dense_in_values_and_gradients(attention):
  """Blocks of 4 over 10 keys: the carry crosses blocks (and flash's replay)."""
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
  gates = [g for path, g in jax.tree_util.tree_leaves_with_path(gd) if "fgate" in str(path)]  # w, b (stacked)
  assert len(gates) == 2 and all(np.abs(np.asarray(g)).max() > 0 for g in gates)


@pytest.mark.parametrize('kw', [{}, {'window': 4}], ids=['full-cache', 'rolling-cache'])
def test_cached_decoding_equals_full_pass_and_packing_separates(kw):
  cfg = _cfg(**kw)
  B, L = 2, 10
  tokens = _tokens(B, L)
  model, params = models.build(cfg), _params(cfg, (B, L))
  apply = jax.jit(model.apply)
  full = apply({'params': params}, tokens)
  cache = models.init_cache(model, params, B, L)
  assert cache['decoder']['layers']['attention']['cached_key'].shape[-1] == 16 + 1
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
  separate = apply({'params': params}, docs)
  np.testing.assert_allclose(out[0, 5:], separate[1], rtol=1e-5, atol=1e-5)
