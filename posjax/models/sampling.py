"""Autoregressive sampling over a KV cache: a pure function of a logits callback."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def init_cache(model, params, batch_size: int, max_len: int):
  """Zeroed KV cache for ``max_len`` tokens (shapes from ``jax.eval_shape``)."""
  tokens = jnp.zeros((batch_size, max_len), jnp.int32)
  shapes = jax.eval_shape(
      lambda: model.apply({'params': params}, tokens, decode=True, mutable=['cache'])[1])
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)['cache']


def decode_step(model, params, cache, tokens_BxL, positions_BxL, position_rows_3xBxL=None):
  """Appends a chunk to the cache; returns (logits [B, L, V], new cache).
  ``position_rows_3xBxL``: the chunk's position rows (M-RoPE; default: text's)."""
  logits, updated = model.apply({'params': params, 'cache': cache}, tokens_BxL,
                                positions_BxL, position_rows=position_rows_3xBxL,
                                decode=True, mutable=['cache'])
  return logits, updated['cache']


def continued_rows(prompt_rows_3xBxP, max_len: int):
  """Position rows ``[3, B, max_len]``: the prompt's, then text continuing after the
  prompt's largest position (Qwen2-VL's ``rope_deltas``): token i >= P gets three
  equal rows ``max(prompt rows) + 1 + i - P``."""
  P = prompt_rows_3xBxP.shape[-1]
  start_1xBx1 = prompt_rows_3xBxP.max(axis=(0, 2), keepdims=True).astype(jnp.int32) + 1
  after_1xBxN = start_1xBx1 + jnp.arange(max_len - P, dtype=jnp.int32)
  return jnp.concatenate([prompt_rows_3xBxP.astype(jnp.int32),
                          jnp.broadcast_to(after_1xBxN, (3, *after_1xBxN.shape[1:]))], -1)


def sample(model, params, prompt_BxP, rng, *, max_len: int, temperature: float = 1.0,
           top_k: int | None = None, prompt_rows=None):
  """Samples continuations of equal-length prompts up to ``max_len`` tokens.

  The prompt is prefilled as one chunk, then tokens are drawn one at a time.
  ``temperature=0`` is greedy. ``prompt_rows`` ``[3, B, P]``: the prompt's position
  rows (an image in it), continued by ``continued_rows``. Returns ``[B, max_len]``
  including the prompt.
  """
  B, P = prompt_BxP.shape
  if not 0 < P <= max_len:
    raise ValueError(f'sample: prompt length {P} must be in [1, max_len={max_len}]')

  @jax.jit  # One program per call: prefill, then the token loop.
  def run(params, prompt_BxP, rng, prompt_rows):
    positions = (jnp.broadcast_to(jnp.arange(max_len, dtype=jnp.int32), (B, max_len)),
                 None if prompt_rows is None else continued_rows(prompt_rows, max_len))
    step = lambda c, t, p: decode_step(model, params, c, t, *p)  # noqa: E731
    cache = init_cache(model, params, B, max_len)
    logits, cache = step(cache, prompt_BxP, jax.tree.map(lambda a: a[..., :P], positions))
    tokens = jnp.zeros((B, max_len), jnp.int32).at[:, :P].set(prompt_BxP)
    return _sample_loop(step, tokens, logits[:, -1], cache, positions, P, rng, temperature, top_k)
  return run(params, prompt_BxP, rng, prompt_rows)


def _choose(logits_BxV, rng, temperature, top_k):
  if temperature == 0:
    return logits_BxV.argmax(-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k is not None:
    kth = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth, -jnp.inf, logits_BxV)
  return jax.random.categorical(rng, logits_BxV).astype(jnp.int32)


def _sample_loop(tokens_to_logits: Callable, tokens, last_logits, cache, positions,
                 start: int, rng, temperature, top_k):
  def body(i, state):
    tokens, last, cache, rng = state
    rng, sub = jax.random.split(rng)
    tok = _choose(last, sub, temperature, top_k)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
    at_i = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, i, 1, -1), positions)
    logits, cache = tokens_to_logits(cache, tok[:, None], at_i)
    return tokens, logits[:, -1], cache, rng
  tokens, *_ = jax.lax.fori_loop(start, tokens.shape[1], body,
                                 (tokens, last_logits, cache, rng))
  return tokens
