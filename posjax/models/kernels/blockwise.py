"""Softmax attention over all keys at once (``dense``, the reference, which also
returns the probabilities) or scanned over key blocks with an online softmax
(``blockwise``: no ``[H, L, S]`` array of the full length exists, so memory grows
linearly with length). Both are ``blocks.block`` applied once or per key block;
``normalizer='stick_breaking'`` applies ``stick_breaking.block`` the same way.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models.kernels import stick_breaking
from posjax.models.kernels.blocks import NEG, allowed, block
from posjax.models.kernels.span import Span


def _softmax_init(enc: Encoding, q_BxLxHxK, Kv: int, sink_H):
  B, L, H, _ = q_BxLxHxK.shape
  m0, l0 = (NEG, 0.0) if sink_H is None else (sink_H[None, :, None], 1.0)
  return (jnp.broadcast_to(m0, (B, H, L)).astype(jnp.float32),
          jnp.full((B, H, L), l0, jnp.float32), jnp.zeros((B, L, H, Kv), jnp.float32),
          enc.init_carry(q_BxLxHxK))


def _softmax_finish(state, p):
  """The output ``[B, L, H, Kv]`` float32 and the probabilities of one dense block."""
  _, l, acc, _ = state
  probs = None if p is None else p / jnp.where(l == 0, 1.0, l)[..., None]
  l = jnp.swapaxes(l, 1, 2)[..., None]
  return acc / jnp.where(l == 0, 1.0, l), probs


# normalizer -> (initial state, one key block, output of the final state).
NORMALIZERS = {
    'softmax': (_softmax_init, block, _softmax_finish),
    'stick_breaking': (lambda enc, q, Kv, sink: stick_breaking.init(enc, q, Kv),
                       stick_breaking.block, stick_breaking.finish),
}


def attend(enc: Encoding, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS,
           qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, *, span: Span,
           block_size: int | None, scale: float, sink_H=None, normalizer: str = 'softmax'):
  """Softmax attention with the encoding's bias / values hooks.

  ``block_size=None`` is dense (one block); otherwise keys are padded to a
  multiple of ``block_size`` and visited from the last block to the first.
  Returns ``[B, L, H, Kv]`` in v's dtype, and in one dense block also the
  probabilities ``[B, H, L, S]`` float32 (None for blockwise). ``sink_H``: a
  learned logit per head in every row's softmax (float32 ``[H]``), the online
  softmax's starting state (max ``sink``, sum 1). ``normalizer``: a key of
  ``NORMALIZERS`` (stick-breaking's weights come back as the probabilities).
  """
  B = q_BxLxHxK.shape[0]
  start, one_block, finish = NORMALIZERS[normalizer]
  init = start(enc, q_BxLxHxK, v_BxSxHxK.shape[-1], sink_H)
  step = functools.partial(one_block, enc, q_BxLxHxK, scale=scale)
  if block_size is None or block_size >= k_BxSxHxK.shape[1]:
    mask = allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, span, qpos_BxL, kpos_BxS)
    state, p = step(k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS, mask, init)
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

    state, p = jax.lax.scan(body, init, xs)[0], None
  out, probs = finish(state, p)
  return out.astype(v_BxSxHxK.dtype), probs
