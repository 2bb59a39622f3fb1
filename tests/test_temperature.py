"""QK-norm and per-query temperatures (``posjax.models.temperature``): the
attention probabilities against a transcription of each formula, every
implementation and cached decoding against the full pass, gradients, errors."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import encodings, models
from posjax.models.attention import Attention

L, D, H = 12, 32, 2
K = D // H


def _cfg(**kw):
  base = dict(kind='decoder', vocab_size=40, num_layers=1, num_heads=H, model_dim=D,
              mlp_dim=64, max_len=8, posenc='none', block_size=4, attention='dense')
  return models.ModelConfig.from_config(dict(base, **kw))


def _probs(cfg, x, params=None):
  """The layer's attention probabilities ``[B, H, L, S]`` and its parameters."""
  layer = Attention(cfg, cfg.make_encoding())
  pos = jnp.arange(L, dtype=jnp.int32)[None]
  seg = jnp.ones((1, L), jnp.int32)
  params = params or nn.unbox(layer.init(jax.random.key(0), x, pos, seg)['params'])
  _, state = layer.apply({'params': params}, x, pos, seg, mutable=['intermediates'])
  return np.asarray(state['intermediates']['attention_probs'][0]), params


def _softmax(logits, causal=True):
  if causal:
    logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _qk(params, x):
  q, k = (np.einsum('bld,dhk->blhk', x, np.asarray(params[n], np.float64)) for n in ('query', 'key'))
  return q, k


X = np.asarray(jax.random.normal(jax.random.key(1), (1, L, D)), np.float32)


def test_ssmax_and_l2_qk_norm_probabilities_follow_the_formulas():
  """Llama 4's L2 norm (fixed scale) and Scalable-Softmax: logits
  ``s_h log(n_i) q^.k^ / sqrt(K)``, n_i = i + 1 keys for a causal query."""
  cfg = _cfg(qk_norm='l2', qk_norm_scale='fixed', temperature='ssmax')
  _, params = _probs(cfg, X)
  params = dict(params, ssmax=jnp.asarray([0.7, 1.3]))
  got, _ = _probs(cfg, X, params)
  q, k = _qk(params, X)
  q, k = (a / np.sqrt((a ** 2).sum(-1, keepdims=True) + 1e-6) for a in (q, k))
  n = np.arange(1, L + 1, dtype=np.float64)
  t = np.log(n)[None, None, :, None] * np.asarray([0.7, 1.3])[None, :, None, None]
  want = _softmax(t * np.einsum('blhk,bshk->bhls', q, k) / math.sqrt(K))
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert params['ssmax'].shape == (H,)


def test_rms_qk_norm_runs_before_rope_with_a_learned_scale():
  """Gemma 3: RMSNorm over the head dim times a learned per-channel scale,
  then RoPE, then the usual 1/sqrt(K)."""
  cfg = _cfg(qk_norm='rms', posenc='rope')
  _, params = _probs(cfg, X)
  scale = jnp.linspace(0.5, 1.5, K)
  params = dict(params, q_norm=scale, k_norm=scale[::-1])
  got, _ = _probs(cfg, X, params)
  q, k = _qk(params, X)
  rms = lambda a, s: a / np.sqrt((a ** 2).mean(-1, keepdims=True) + 1e-6) * np.asarray(s)  # noqa: E731
  q, k = rms(q, scale), rms(k, scale[::-1])
  inv_freq, _ = encodings.rope_inv_freq(K)
  pos = jnp.arange(L, dtype=jnp.int32)[None]
  q, k = (np.asarray(encodings.apply_rope(jnp.asarray(a, jnp.float32), pos, inv_freq), np.float64)
          for a in (q, k))
  want = _softmax(np.einsum('blhk,bshk->bhls', q, k) / math.sqrt(K))
  np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize('kw', [
    dict(qk_norm='rms', temperature='ssmax'),
    pytest.param(dict(qk_norm='l2', temperature='logn', temperature_args={'train_len': 4}),
                 marks=pytest.mark.slow),
    pytest.param(dict(temperature='llama4', temperature_args={'floor_scale': 3}),
                 marks=pytest.mark.slow)], ids=['rms-ssmax', 'l2-logn', 'llama4'])
def test_flash_and_cached_decoding_equal_dense(kw):
  """Packed rows, restarting positions: flash equals dense in values and
  gradients; decoding token by token equals the full pass."""
  cfg = _cfg(posenc='alibi', num_layers=2, **kw)
  tokens = jax.random.randint(jax.random.key(2), (2, L), 4, 40)
  pos = jnp.asarray([list(range(L)), list(range(5)) + list(range(L - 5))], jnp.int32)
  seg = jnp.asarray([[1] * L, [1] * 5 + [2] * (L - 5)], jnp.int32)
  model = models.build(cfg)
  params = nn.unbox(model.init(jax.random.key(0), tokens, pos, seg)['params'])

  grads = flash_grads_equal_dense(cfg, params, tokens, pos, seg)
  grads = grads['decoder']['layers']['attention']  # (Scanned: stacked on the layers.)
  added = [n for n in ('q_norm', 'k_norm', 'ssmax') if n in grads]
  assert added and all(np.abs(grads[n]).min(-1).max() > 0 for n in added)
  full = model.apply({'params': params}, tokens[:1])
  np.testing.assert_allclose(decoded(model, params, tokens[:1], pos[:1], prefill=4)[0], full,
                             rtol=1e-4, atol=1e-4)


def flash_grads_equal_dense(cfg, params, tokens, pos, seg):
  """Asserts flash = dense in the loss and every gradient; returns the gradients."""
  @functools.partial(jax.jit, static_argnums=1)
  def loss(p, c):
    return (models.build(c).apply({'params': p}, tokens, pos, seg) ** 2).mean()
  want = jax.value_and_grad(loss)(params, cfg)
  got = jax.value_and_grad(loss)(params, cfg.replace(attention='flash'))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), want, got)
  return want[1]


def decoded(model, params, tokens, pos, prefill):
  """``(logits, cache)`` of decoding ``tokens``: a prefill, then one token at a time."""
  cache = models.init_cache(model, params, tokens.shape[0], tokens.shape[1])
  step = jax.jit(functools.partial(models.decode_step, model))
  logits, cache = step(params, cache, tokens[:, :prefill], pos[:, :prefill])
  steps = [logits]
  for i in range(prefill, tokens.shape[1]):
    logits, cache = step(params, cache, tokens[:, i:i + 1], pos[:, i:i + 1])
    steps.append(logits)
  return jnp.concatenate(steps, 1), cache


def test_bad_options_are_one_line_errors():
  for kw, match in ((dict(qk_norm='layer'), "model.qk_norm: got 'layer'; allowed: none, rms, l2"),
                    (dict(temperature='cold'), 'model.temperature: got'),
                    (dict(temperature='logn', temperature_args={'floor_scale': 2}),
                     'model.temperature_args.floor_scale: got 2; allowed: train_len for '
                     'temperature=logn'),
                    (dict(temperature='logn', temperature_args={'train_len': 0}),
                     'allowed: a number > 0')):
    with pytest.raises(ValueError, match=match):
      _cfg(**kw)


def test_length_scales_by_hand():
  """Qwen's logn (1-based i > train_len: log_train_len(i)) and Llama 4's
  temperature tuning (log1p(floor((p + 1) / floor_scale)) * attn_scale + 1)."""
  p = jnp.asarray([0, 7, 8, 63, 8190, 8191, 16383])
  np.testing.assert_allclose(encodings.logn_attention_scale(p, train_len=8),
                             [1, 1, math.log(9, 8), math.log(64, 8), math.log(8191, 8),
                              math.log(8192, 8), math.log(16384, 8)], rtol=1e-6)
  np.testing.assert_allclose(encodings.llama4_attention_scale(p),
                             [1, 1, 1, 1, 1, 1 + 0.1 * math.log(2), 1 + 0.1 * math.log(3)],
                             rtol=1e-6)
