"""The KV caches of cached decoding, as variables of the attention module.

``full``: one slot per token up to the maximum decode length (the length of the
first, initialising call); later calls write their chunk at the next slots.

``rolling`` (layers with a sliding window or chunked attention): the cache keeps
only what a later query can still see: the last ``Span.reach`` keys (the smaller
of window and chunk) and, with ``model.sink_tokens = k``, those at positions < k
(StreamingLLM's sinks), so its memory is O(window + k) however long the decoding
runs. Each call attends over
the cache followed by its own chunk (any length: a prefill longer than the
window included), then keeps the last ``reach`` of those and the sinks.
Every cached key carries its slot, so the window / chunk mask is exact; keys
keep the positions they were encoded with (not re-positioned within the cache).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def full(module: nn.Module, k, v, pos, seg):
  """Appends this chunk to the full cache; returns ``(k, v, kpos, kseg, kidx, qidx)``
  over the whole cache."""
  B, L = pos.shape
  is_init = not module.has_variable('cache', 'cached_key')
  ck = module.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
  cv = module.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
  cpos = module.variable('cache', 'cached_pos', jnp.zeros, pos.shape, jnp.int32)
  cseg = module.variable('cache', 'cached_seg', jnp.zeros, seg.shape, jnp.int32)
  cidx = module.variable('cache', 'cached_index', lambda: jnp.zeros((), jnp.int32))
  S = ck.value.shape[1]
  i = cidx.value
  if not is_init:
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
    cpos.value = jax.lax.dynamic_update_slice(cpos.value, pos.astype(jnp.int32), (0, i))
    cseg.value = jax.lax.dynamic_update_slice(cseg.value, seg.astype(jnp.int32), (0, i))
    cidx.value = i + L
  slots = jnp.arange(S, dtype=jnp.int32)
  kidx = jnp.broadcast_to(jnp.where(slots < i + L, slots, -1), (B, S))
  qidx = jnp.broadcast_to(i + jnp.arange(L, dtype=jnp.int32), (B, L))
  return ck.value, cv.value, cpos.value, cseg.value, kidx, qidx


def rolling(module: nn.Module, cfg, k, v, pos, seg):
  """The rolling cache: returns ``(k, v, kpos, kseg, kidx, qidx)`` over the cache
  and this chunk, and keeps the sinks and the last ``cfg.span.reach`` keys."""
  B, L = pos.shape
  n_sink, W = cfg.sink_tokens, cfg.span.reach
  size = n_sink + W
  is_init = not module.has_variable('cache', 'cached_key')
  shape = lambda a: (B, size) + a.shape[2:]  # noqa: E731
  ck = module.variable('cache', 'cached_key', jnp.zeros, shape(k), k.dtype)
  cv = module.variable('cache', 'cached_value', jnp.zeros, shape(v), v.dtype)
  cpos = module.variable('cache', 'cached_pos', jnp.zeros, (B, size), jnp.int32)
  cseg = module.variable('cache', 'cached_seg', jnp.zeros, (B, size), jnp.int32)
  cslot = module.variable('cache', 'cached_slot', lambda: jnp.full((B, size), -1, jnp.int32))
  cidx = module.variable('cache', 'cached_index', lambda: jnp.zeros((), jnp.int32))
  i = cidx.value
  qidx = jnp.broadcast_to(i + jnp.arange(L, dtype=jnp.int32), (B, L))
  new = (k.astype(ck.value.dtype), v.astype(cv.value.dtype), pos.astype(jnp.int32),
         seg.astype(jnp.int32), qidx)
  old = (ck.value, cv.value, cpos.value, cseg.value, cslot.value)
  keys = tuple(jnp.concatenate([o, n], 1) for o, n in zip(old, new))
  if not is_init:
    # Sinks: the key at position s < n_sink sits at index s, from the chunk holding it.
    match = pos[:, None, :] == jnp.arange(n_sink, dtype=pos.dtype)[None, :, None]
    arrived, src = match.any(-1), jnp.argmax(match, -1)  # [B, n_sink]
    shaped = lambda a, x: a.reshape(a.shape + (1,) * (x.ndim - 2))  # noqa: E731
    sinks = tuple(jnp.where(shaped(arrived, o), jnp.take_along_axis(n, shaped(src, n), 1),
                            o[:, :n_sink]) for o, n in zip(old, new))
    recent = [jnp.concatenate([o[:, n_sink:], n], 1)[:, -W:] for o, n in zip(old, new)]
    recent[-1] = jnp.where(recent[2] < n_sink, -1, recent[-1])  # (Kept as sinks.)
    for var, s, r in zip((ck, cv, cpos, cseg, cslot), sinks, recent):
      var.value = jnp.concatenate([s, r], 1)
    cidx.value = i + L
  return keys + (qidx,)
