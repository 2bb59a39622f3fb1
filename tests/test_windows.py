"""Sliding windows, chunked attention, sinks and per-layer schedules.

The mask is checked against an independent numpy transcription of each paper's
rule; every implementation against ``dense`` in values and gradients on packed
rows; cached decoding (a rolling cache of O(window) keys) against the full pass.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import config_lib, models
from posjax.models.kernels import blockwise, flash, pallas
from posjax.models.kernels.span import Span

from test_models import _cfg
from test_temperature import decoded, flash_grads_equal_dense

B, L, H, K = 2, 24, 2, 8


def _reference_mask(causal, window, chunk, sinks, pos, seg):
  """Mistral / Longformer windows (|i - j| < w), Llama 4 chunks (same
  ``pos // chunk``), StreamingLLM sinks (pos_j < k), per document, as loops."""
  out = np.zeros((len(pos), L, L), bool)
  for b in range(len(pos)):
    for i in range(L):
      for j in range(L):
        if seg[b][i] != seg[b][j] or (causal and j > i):
          continue
        near = (not window or abs(i - j) < window) and (
            not chunk or pos[b][i] // chunk == pos[b][j] // chunk)
        out[b, i, j] = near or pos[b][j] < sinks
  return out


def _packed():
  pos = np.asarray([list(range(L)), list(range(9)) + list(range(L - 9))])
  seg = np.asarray([[1] * L, [1] * 9 + [2] * (L - 9)])
  return pos, seg


SPANS = [dict(window=5), dict(chunk=6), dict(window=7, sinks=2), dict(chunk=8, sinks=1)]


@pytest.mark.parametrize('causal', [True, False])
def test_span_mask_is_the_papers_rule(causal):
  pos, seg = _packed()
  idx = np.broadcast_to(np.arange(L), (B, L))
  for kw in SPANS:
    got = Span(causal, **kw).pairs(jnp.asarray(idx), jnp.asarray(idx), jnp.asarray(pos),
                                   jnp.asarray(pos)) & (seg[:, :, None] == seg[:, None, :])
    want = _reference_mask(causal, kw.get('window', 0), kw.get('chunk', 0), kw.get('sinks', 0),
                           pos, seg)
    np.testing.assert_array_equal(got, want, err_msg=str(kw))


def _reference_attention(q, k, v, mask, sink):
  """Softmax over the allowed keys and the sink logit (gpt-oss: a column dropped
  after the softmax), float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum('blhk,bshk->bhls', q, k) / np.sqrt(K)
  s = np.where(mask[:, None], s, -np.inf)
  top = np.maximum(s.max(-1, keepdims=True), sink[None, :, None, None])
  e = np.exp(s - top)
  z = e.sum(-1, keepdims=True) + np.exp(sink[None, :, None, None] - top)
  return np.einsum('bhls,bshk->blhk', e / z, v)


def _attend(impl, span, sink, q, k, v, pos, seg):
  enc = _cfg('alibi', num_heads=H, model_dim=H * K).make_encoding().bind({})
  idx = jnp.broadcast_to(jnp.arange(L), (B, L))
  args = (enc, q, k, v, pos, pos, idx, idx, seg, seg)
  if impl == 'dense':
    return blockwise.attend(*args, span=span, block_size=None, scale=K ** -0.5, sink_H=sink)[0]
  if impl == 'blockwise':
    return blockwise.attend(*args, span=span, block_size=4, scale=K ** -0.5, sink_H=sink)[0]
  run = functools.partial(pallas.attend, interpret=True) if impl == 'pallas' else flash.attend
  return run(*args, span=span, block_q=4, block_k=4, scale=K ** -0.5, sink_H=sink)


@pytest.mark.parametrize('impl', ['blockwise', 'flash', 'pallas'])
def test_every_implementation_equals_dense_with_window_chunk_and_sinks(impl):
  """Packed rows; ALiBi's bias (in the Pallas kernels: computed inside); values
  and gradients of q, k, v and the learned sink logits."""
  pos, seg = (jnp.asarray(a, jnp.int32) for a in _packed())
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((B, L, H, K)), jnp.float32) for _ in range(3))
  sink = jnp.asarray([0.5, -1.0], jnp.float32)
  for kw in SPANS[:2] + SPANS[2:] * (impl != 'pallas'):
    span = Span(True, **kw)
    def loss(impl, q, k, v, sink):
      return (_attend(impl, span, sink, q, k, v, pos, seg) ** 2).sum()
    grad = jax.jit(jax.value_and_grad(loss, (1, 2, 3, 4)), static_argnums=0)
    want, got = grad('dense', q, k, v, sink), grad(impl, q, k, v, sink)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5,
                                                         err_msg=str(kw)), want, got)
  # Dense itself against the papers' rule in float64 (ALiBi's bias aside: none here).
  enc = _cfg('none', num_heads=H, model_dim=H * K).make_encoding().bind({})
  idx = jnp.broadcast_to(jnp.arange(L), (B, L))
  span = Span(True, window=7, sinks=2)
  got = blockwise.attend(enc, q, k, v, pos, pos, idx, idx, seg, seg, span=span,
                         block_size=None, scale=K ** -0.5, sink_H=sink)[0]
  mask = _reference_mask(True, 7, 0, 2, np.asarray(pos), np.asarray(seg))
  np.testing.assert_allclose(got, _reference_attention(q, k, v, mask, np.asarray(sink)),
                             rtol=1e-5, atol=1e-5)


def test_schedule_with_windows_chunks_and_sinks_flash_decoding_and_gradients():
  """Two layers (RoPE with a window of 5; NoPE with chunks of 6 and Llama 4's
  temperature), StreamingLLM sink tokens and learned sink logits, scanned:
  flash equals dense on packed rows, every parameter (the sink logits too) gets
  a gradient, a packed row gives each document its logits alone, and decoding
  from a prefill shorter or longer than the window, with a cache of sinks +
  window keys, equals the full pass."""
  pattern = ({'posenc': 'rope', 'window': 5},
             {'posenc': 'none', 'chunk': 6, 'temperature': 'llama4',
              'temperature_args': {'floor_scale': 4}})
  cfg = _cfg('rope', num_layers=4, layer_pattern=pattern, sinks='learned', sink_tokens=2,
             max_len=L)
  pos, seg = (jnp.asarray(a, jnp.int32) for a in _packed())
  tokens = jax.random.randint(jax.random.key(2), (B, L), 4, 40)
  model = models.build(cfg)
  params = nn.unbox(model.init(jax.random.key(0), tokens, pos, seg)['params'])
  params = jax.tree.map(lambda a: a + 0.1, params)  # (Sink logits away from 0.)

  grads = flash_grads_equal_dense(cfg, params, tokens, pos, seg)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  assert all(np.abs(g).max() > 0 for _, g in flat), [p for p, g in flat if not np.abs(g).max()]
  assert grads['decoder']['layers']['layer_1']['attention']['sinks'].shape == (2, H)

  apply = jax.jit(lambda t, p, s: model.apply({'params': params}, t, p, s))
  full = apply(tokens[:1], pos[:1], seg[:1])
  # Packed documents stay separate: chunks and sinks count each one's own positions.
  packed = apply(tokens[1:], pos[1:], seg[1:])
  for a, b in ((0, 9), (9, L)):
    alone = apply(tokens[1:, a:b], pos[1:, a:b], jnp.ones((1, b - a), jnp.int32))
    np.testing.assert_allclose(packed[:, a:b], alone, rtol=1e-4, atol=1e-4)
  for prefill in (3, 9):  # Shorter, then longer than the window.
    steps, cache = decoded(model, params, tokens[:1], pos[:1], prefill)
    np.testing.assert_allclose(steps, full, rtol=1e-4, atol=1e-4, err_msg=f'{prefill}')
  keys = cache['decoder']['layers']
  assert keys['layer_0']['attention']['cached_key'].shape == (2, 1, 2 + 5, H, 32 // H)
  assert keys['layer_1']['attention']['cached_key'].shape == (2, 1, 2 + 6, H, 32 // H)


def test_flash_decoding_from_a_prefill_shorter_than_the_window():
  """A rolling cache that has not filled yet: the chunk's keys sit after the cache at
  indices above their slots, so flash may not bound its key tiles by slot (it once
  skipped the whole prefill there and attended to nothing)."""
  cfg = _cfg('rope', num_layers=1, max_len=L, window=8, block_size=4).replace(attention='flash')
  tokens = jax.random.randint(jax.random.key(2), (1, 12), 4, 40)
  pos = jnp.arange(12)[None]
  model = models.build(cfg)
  params = nn.unbox(model.init(jax.random.key(0), tokens)['params'])
  full = model.apply({'params': params}, tokens)
  steps, _ = decoded(model, params, tokens, pos, prefill=6)
  np.testing.assert_allclose(steps, full, rtol=1e-4, atol=1e-4)


def test_windows_change_what_the_model_computes():
  """A window narrower than the row changes late tokens' logits, not early ones'."""
  tokens = jax.random.randint(jax.random.key(2), (1, L), 4, 40)
  cfg = _cfg('rope', max_len=L)
  params = nn.unbox(models.build(cfg).init(jax.random.key(0), tokens)['params'])
  full = models.build(cfg).apply({'params': params}, tokens)
  windowed = models.build(cfg.replace(window=4)).apply({'params': params}, tokens)
  np.testing.assert_allclose(full[:, :4], windowed[:, :4], rtol=1e-5, atol=1e-6)
  assert np.abs(full[:, 4:] - windowed[:, 4:]).max() > 1e-3


def test_arch_presets_and_bad_patterns():
  fields = config_lib.arch_fields('irope', 128)
  assert fields['layer_pattern'][0] == {'posenc': 'rope', 'chunk': 32}
  assert fields['layer_pattern'][3]['temperature'] == 'llama4'
  gemma = config_lib.arch_fields('gemma3', 128)
  assert gemma['qk_norm'] == 'rms' and len(gemma['layer_pattern']) == 6
  cfg = _cfg('rope', num_layers=6, **gemma)
  assert [c.posenc_kwargs().get('base') for c in cfg.layer_configs()] == [1e4] * 5 + [1e6]
  assert [c.window for c in cfg.layer_configs()] == [32] * 5 + [0]
  for kw, match in (
      (dict(layer_pattern=({'posenc': 'rope', 'heads': 2},)),
       r"model.layer_pattern\[0\]: got 'heads'; allowed: posenc, posenc_args, window"),
      (dict(layer_pattern=({'window': -1},)),
       r'model.layer_pattern\[0\]: model.window: got -1; allowed: an integer >= 0'),
      (dict(layer_pattern=({'posenc': 't5'},)),
       r"model.layer_pattern\[0\].posenc: got 't5'"),
      (dict(num_layers=3, layer_pattern=({}, {})),
       'a period that divides num_layers=3 when scan_layers'),
      (dict(sinks='yes'), "model.sinks: got 'yes'; allowed: none, learned")):
    with pytest.raises(ValueError, match=match):
      _cfg('rope', **kw)
  with pytest.raises(ValueError, match="arch: got 'llama'; allowed: irope, gemma3"):
    config_lib.arch_fields('llama', 128)



def test_scanned_schedule_converts_to_the_plain_layout_and_back():
  """Scanned per period (``layers/layer_p`` stacked over periods) = the plain
  stack, layer i taking entry i % period."""
  cfg = _cfg('rope', num_layers=4, layer_pattern=({'window': 4}, {'posenc': 'none'}))
  tokens = jax.random.randint(jax.random.key(0), (1, 8), 4, 40)
  scanned = nn.unbox(models.build(cfg).init(jax.random.key(1), tokens)['params'])
  plain = models.unstack_layers(scanned)
  assert {f'layer_{i}' for i in range(4)} <= set(plain['decoder'])
  apply = lambda c, p: models.build(c).apply({'params': p}, tokens)  # noqa: E731
  got = jax.jit(lambda s, p: (apply(cfg, s), apply(cfg.replace(scan_layers=False), p)))(
      scanned, plain)
  np.testing.assert_allclose(*got, rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, models.stack_layers(plain, period=2), scanned)
