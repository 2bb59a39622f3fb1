"""The block math every attention implementation shares: which (query, key)
pairs may meet (``allowed``), one key block's logits, bias and values through the
encoding's hooks (``block``), the online-softmax step, and the padded, tiled
operands of the tiled implementations (``Tiles``, ``Inputs``, ``nonempty``).

Attention never branches on encoding names: every hook of
``posjax.encodings.base.Encoding`` is called, and the identity defaults cost nothing.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models.kernels.span import Span

NEG = -1e30  # Finite "minus infinity": keeps fully masked rows NaN-free.


def allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, span: Span, qpos_BxL, kpos_BxS):
  """True where query i may attend key j: same segment, and j in ``span`` of i.

  Indices are token slots (not positions: positions may be randomized or
  restart per document); key slots < 0 mark padding / empty cache.
  """
  return ((qseg_BxL[:, :, None] == kseg_BxS[:, None, :])
          & span.pairs(qidx_BxL, kidx_BxS, qpos_BxL, kpos_BxS))


def count_allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, span: Span, qpos_BxL, kpos_BxS,
                  block_size: int = 512):
  """``[B, L]`` int32: how many keys each query may attend (``allowed``'s row sums),
  over key blocks: memory O(L * block_size), not O(L * S)."""
  S = kidx_BxS.shape[1]
  n = -(-S // block_size)
  keys = [pad(a, n * block_size, f) for a, f in ((kidx_BxS, -1), (kseg_BxS, -2), (kpos_BxS, 0))]
  keys = [jnp.moveaxis(a.reshape(a.shape[0], n, block_size), 1, 0) for a in keys]

  def add(total, blk):
    kidx, kseg, kpos = blk
    ok = allowed(qidx_BxL, kidx, qseg_BxL, kseg, span, qpos_BxL, kpos)
    return total + ok.sum(-1, dtype=jnp.int32), None
  return jax.lax.scan(add, jnp.zeros(qidx_BxL.shape, jnp.int32), keys)[0]


def block(enc: Encoding, q, k, v, qpos, kpos, mask, carry, scale):
  """Logits, bias, probabilities and value sums for one key block."""
  m, l, acc, enc_carry = carry
  logits = jnp.einsum('blhk,bshk->bhls', q, k,
                      preferred_element_type=jnp.float32) * scale
  bias, enc_carry = enc.bias(q, k, qpos, kpos, mask, enc_carry)
  if bias is not None:
    logits = logits + bias
  logits = jnp.where(mask[:, None], logits, NEG)
  m_new, p, corr = softmax_step(m, logits, mask)
  out = jnp.einsum('bhls,bshk->blhk', p, v.astype(jnp.float32))
  extra = enc.values(p, qpos, kpos)
  if extra is not None:
    out = out + extra.astype(jnp.float32)
  acc = acc * jnp.swapaxes(corr, 1, 2)[..., None] + out
  return (m_new, l * corr + p.sum(-1), acc, enc_carry), p


def softmax_step(m_BxHxL, logits_BxHxLxS, mask_BxLxS):
  """The online softmax over one block of masked logits: the new running max, the
  block's unnormalised probabilities and the factor that rescales the old state."""
  m_new = jnp.maximum(m_BxHxL, logits_BxHxLxS.max(-1))
  p = jnp.exp(logits_BxHxLxS - m_new[..., None]) * mask_BxLxS[:, None]
  return m_new, p, jnp.exp(m_BxHxL - m_new)


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Padded, tiled views of the inputs ``[B, n * block, ...]``."""
  bq: int
  bk: int
  nq: int
  nk: int
  span: Span

  def q(self, x, i):
    return jax.lax.dynamic_slice_in_dim(x, i * self.bq, self.bq, axis=1)

  def k(self, x, j):
    return jax.lax.dynamic_slice_in_dim(x, j * self.bk, self.bk, axis=1)

  def key_tiles(self, qidx_t):
    """Key tiles ``[first, end)`` that can hold an allowed pair for this query tile."""
    return self.span.key_tiles(qidx_t, self.bk, self.nk)


def pad(x, n, fill):
  pad = n - x.shape[1]
  return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)


def nonempty(qseg_t, kseg_t, qidx_t, kidx_t, kpos_t, span: Span):
  """False only if no (query, key) pair of the tile shares a segment within the span."""
  big = jnp.iinfo(jnp.int32).max
  valid = kidx_t >= 0
  kmin = jnp.where(valid, kseg_t, big).min(1)
  kmax = jnp.where(valid, kseg_t, -big).max(1)
  overlap = ((qseg_t.min(1) <= kmax) & (kmin <= qseg_t.max(1))
             & span.tile_may_see(qidx_t, kidx_t, kpos_t))
  return overlap.astype(jnp.int32).max() > 0  # (Not jnp.any: Triton has no reduce_or.)


class Inputs:
  """The padded operands and their tiles, shared by the forward and backward passes."""

  def __init__(self, tiles, q, k, v, qpos, kpos, qidx, kidx, qseg, kseg):
    t = tiles
    self.t = t
    self.q, self.qpos, self.qidx, self.qseg = (
        pad(x, t.nq * t.bq, f) for x, f in ((q, 0), (qpos, 0), (qidx, -1), (qseg, -1)))
    self.k, self.v, self.kpos, self.kidx, self.kseg = (
        pad(x, t.nk * t.bk, f) for x, f in ((k, 0), (v, 0), (kpos, 0), (kidx, -1), (kseg, -2)))

  def query(self, i):
    t = self.t
    return t.q(self.q, i), t.q(self.qpos, i), t.q(self.qidx, i), t.q(self.qseg, i)

  def key(self, j):
    t = self.t
    return tuple(t.k(x, j) for x in (self.k, self.v, self.kpos, self.kidx, self.kseg))
