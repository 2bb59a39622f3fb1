"""Per-query attention scales that grow with the position (float32).

``logn_attention_scale`` — Qwen's log-n attention scaling (Qwen-7B's
``logn_list``: ``math.log(i, seq_length) if i > seq_length else 1`` for the
1-based position i): a query at 0-based position p is multiplied by
``log(p + 1) / log(train_len)`` once ``p + 1 > train_len``, else 1.

``llama4_attention_scale`` — Llama 4's attention temperature tuning of its NoPE
layers (Hugging Face ``Llama4TextAttention``: ``log1p(floor((cache_position + 1) /
floor_scale)) * attn_scale + 1`` with the 0-based cache position).

Both take explicit integer positions of any shape and return float32 of the same
shape; ``posjax.models.temperature`` applies them to the queries.
"""
from __future__ import annotations

import jax.numpy as jnp

from posjax.encodings.base import Array


def logn_attention_scale(positions: Array, *, train_len: int) -> Array:
  if not train_len > 1:
    raise ValueError(f'train_len: got {train_len!r}; allowed: an integer > 1')
  n = jnp.asarray(positions).astype(jnp.int32).astype(jnp.float32) + 1.0
  return jnp.where(n > train_len, jnp.log(n) / jnp.log(jnp.float32(train_len)), 1.0)


def llama4_attention_scale(positions: Array, *, floor_scale: float = 8192,
                           attn_scale: float = 0.1) -> Array:
  if not floor_scale > 0:
    raise ValueError(f'floor_scale: got {floor_scale!r}; allowed: a number > 0')
  n = jnp.asarray(positions).astype(jnp.int32).astype(jnp.float32) + 1.0
  return jnp.log1p(jnp.floor(n / floor_scale)) * attn_scale + 1.0
