"""Softmax attention over all keys at once (``dense``, the reference, which also
returns the probabilities) or scanned over key blocks with an online softmax
(``blockwise``: no ``[H, L, S]`` array of the full length exists, so memory grows
linearly with length). Both are ``blocks.block`` applied once or per key block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models.kernels.blocks import NEG, allowed, block
from posjax.models.kernels.span import Span


def attend(enc: Encoding, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS,
           qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, *, span: Span,
           block_size: int | None, scale: float, sink_H=None):
  """Softmax attention with the encoding's bias / values hooks.

  ``block_size=None`` is dense (one block); otherwise keys are padded to a
  multiple of ``block_size`` and visited from the last block to the first.
  Returns ``[B, L, H, Kv]`` in v's dtype, and in one dense block also the
  probabilities ``[B, H, L, S]`` float32 (None for blockwise). ``sink_H``: a
  learned logit per head in every row's softmax (float32 ``[H]``), the online
  softmax's starting state (max ``sink``, sum 1).
  """
  B, L, H, _ = q_BxLxHxK.shape
  Kv = v_BxSxHxK.shape[-1]
  m0, l0 = (NEG, 0.0) if sink_H is None else (sink_H[None, :, None], 1.0)
  init = (jnp.broadcast_to(m0, (B, H, L)).astype(jnp.float32),
          jnp.full((B, H, L), l0, jnp.float32), jnp.zeros((B, L, H, Kv), jnp.float32),
          enc.init_carry(q_BxLxHxK))
  step = functools.partial(block, enc, q_BxLxHxK, scale=scale)
  if block_size is None or block_size >= k_BxSxHxK.shape[1]:
    mask = allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, span, qpos_BxL, kpos_BxS)
    (_, l, acc, _), p = step(k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS, mask, init)
    probs = p / jnp.where(l == 0, 1.0, l)[..., None]
  else:
    S = k_BxSxHxK.shape[1]
    n = -(-S // block_size)
    pad = n * block_size - S
    def blocks(x, fill):  # [B, S, ...] -> [n, B, block, ...], last block first
      x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
      x = x.reshape((B, n, block_size) + x.shape[2:])
      return jnp.flip(jnp.moveaxis(x, 1, 0), 0)
    xs = (blocks(k_BxSxHxK, 0), blocks(v_BxSxHxK, 0), blocks(kpos_BxS, 0),
          blocks(kidx_BxS, -1), blocks(kseg_BxS, 0))

    @jax.checkpoint  # Keep only the carries: memory linear in length.
    def body(carry, blk):
      k, v, kpos, kidx, kseg = blk
      mask = allowed(qidx_BxL, kidx, qseg_BxL, kseg, span, qpos_BxL, kpos)
      return step(k, v, qpos_BxL, kpos, mask, carry)[0], None

    (_, l, acc, _), _ = jax.lax.scan(body, init, xs)
    probs = None
  l = jnp.swapaxes(l, 1, 2)[..., None]
  return (acc / jnp.where(l == 0, 1.0, l)).astype(v_BxSxHxK.dtype), probs
