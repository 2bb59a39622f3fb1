"""Multi-head attention that asks its positional encoding for what it needs.

``attend`` is the single block computation behind two implementations:
``dense`` runs it once over all keys (the reference), ``blockwise`` scans it over
key blocks with an online softmax, so no ``[H, L, S]`` array of the full length
exists and memory grows linearly with length; ``flash`` (``posjax.models.flash``)
tiles queries too, skips empty tiles and has its own backward pass; ``cudnn`` and
``splash`` (``posjax.models.fused``) are the vendors' kernels for encodings with no
bias or value hook. Attention never branches on encoding names: every hook of
``posjax.encodings.base.Encoding`` is called, and the identity defaults cost nothing.
"""
from __future__ import annotations

import functools

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models import fused
from posjax.models.config import ModelConfig

NEG = -1e30  # Finite "minus infinity": keeps fully masked rows NaN-free.
# ``attention='auto'``: the platform's fused kernel (``posjax.models.fused``:
# cuDNN on GPU, splash on TPU) where it can serve the config; else dense (one
# block, probabilities for analysis) up to this many keys and flash above
# (tests/test_flash.py; experiments/attention_benchmark.py: flash is faster from
# 1024 keys on CPU).
AUTO_DENSE_MAX = 512
_announced: set = set()


def choose(cfg: ModelConfig, num_queries: int, num_keys: int) -> str:
  """The implementation ``cfg.attention`` means for these lengths (logged once).

  Fused kernels serve full passes only: cached decoding (fewer queries than
  keys) takes dense or flash by the key count, even when a kernel is named.
  """
  chosen, why = cfg.attention, 'named'
  if chosen == 'auto':
    kernel = fused.for_platform()
    why = fused.why_not(kernel, cfg, num_keys) if kernel else 'no fused kernel here'
    chosen = kernel if why is None else None
  if chosen in fused.PLATFORMS and num_queries != num_keys:
    chosen, why = None, 'cached decoding'
  if chosen is None:
    chosen = 'dense' if num_keys <= AUTO_DENSE_MAX else 'flash'
    why = f'{why}; dense up to {AUTO_DENSE_MAX} keys, flash above'
  if (cfg.attention, num_keys, chosen) not in _announced:
    _announced.add((cfg.attention, num_keys, chosen))
    logging.info('attention=%s: %s for %d keys on %s (%s)', cfg.attention, chosen, num_keys,
                 jax.default_backend(), why or 'the fused kernel serves this config')
  return chosen


def allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, causal: bool):
  """True where query i may attend key j: same segment, and j <= i if causal.

  Indices are token slots (not positions: positions may be randomized or
  restart per document); key slots < 0 mark padding / empty cache.
  """
  ok = (qseg_BxL[:, :, None] == kseg_BxS[:, None, :]) & (kidx_BxS[:, None, :] >= 0)
  if causal:
    ok &= kidx_BxS[:, None, :] <= qidx_BxL[:, :, None]
  return ok


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


def attend(enc: Encoding, q_BxLxHxK, k_BxSxHxK, v_BxSxHxK, qpos_BxL, kpos_BxS,
           qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, *, causal: bool,
           block_size: int | None, scale: float):
  """Softmax attention with the encoding's bias / values hooks.

  ``block_size=None`` is dense (one block); otherwise keys are padded to a
  multiple of ``block_size`` and visited from the last block to the first.
  Returns ``[B, L, H, Kv]`` in v's dtype, and in one dense block also the
  probabilities ``[B, H, L, S]`` float32 (None for blockwise).
  """
  B, L, H, _ = q_BxLxHxK.shape
  Kv = v_BxSxHxK.shape[-1]
  init = (jnp.full((B, H, L), NEG, jnp.float32), jnp.zeros((B, H, L), jnp.float32),
          jnp.zeros((B, L, H, Kv), jnp.float32), enc.init_carry(q_BxLxHxK))
  step = functools.partial(block, enc, q_BxLxHxK, scale=scale)
  if block_size is None or block_size >= k_BxSxHxK.shape[1]:
    mask = allowed(qidx_BxL, kidx_BxS, qseg_BxL, kseg_BxS, causal)
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
      mask = allowed(qidx_BxL, kidx, qseg_BxL, kseg, causal)
      return step(k, v, qpos_BxL, kpos, mask, carry)[0], None

    (_, l, acc, _), _ = jax.lax.scan(body, init, xs)
    probs = None
  l = jnp.swapaxes(l, 1, 2)[..., None]
  return (acc / jnp.where(l == 0, 1.0, l)).astype(v_BxSxHxK.dtype), probs


class Attention(nn.Module):
  """Self-attention with an optional KV cache for autoregressive decoding."""
  cfg: ModelConfig
  encoding: Encoding

  @nn.compact
  def __call__(self, x_BxLxD, pos_BxL, seg_BxL, *, decode: bool = False):
    cfg = self.cfg
    D, H, K = cfg.model_dim, cfg.num_heads, cfg.head_dim
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    q, k, v = (
        jnp.einsum('bld,dhk->blhk', x_BxLxD, self.param(
            name, nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')),
            (D, H, K), jnp.float32).astype(cfg.activation_dtype))
        for name in ('query', 'key', 'value'))
    q, k = self.encoding.qk(q, k, pos_BxL, pos_BxL)
    B, L = pos_BxL.shape
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    kidx, kpos, kseg = idx, pos_BxL, seg_BxL
    if decode:
      k, v, kpos, kseg, kidx, idx = self._update_cache(k, v, pos_BxL, seg_BxL)
    args = (self.encoding, q, k, v, pos_BxL, kpos, idx, kidx, seg_BxL, kseg)
    impl = choose(cfg, q.shape[1], k.shape[1])
    if impl in ('flash', 'pallas') and self.is_initializing():  # Init makes the encoding's
      impl = 'blockwise'  # params, which flash applies its hooks to; blockwise: linear memory.
    if impl in ('cudnn', 'splash'):
      out, probs = fused.attend(impl, q, k, v, seg_BxL, kseg, causal=cfg.causal,
                                scale=cfg.head_dim ** -0.5), None
    elif impl in ('flash', 'pallas'):
      from posjax.models import flash  # (flash builds on this module.)
      out, probs = flash.attend(*args, causal=cfg.causal, block_q=cfg.block_size,
                                block_k=cfg.block_size, scale=cfg.head_dim ** -0.5,
                                pallas=impl == 'pallas'), None
    else:
      block = cfg.block_size if impl == 'blockwise' else None
      out, probs = attend(*args, causal=cfg.causal, block_size=block,
                          scale=cfg.head_dim ** -0.5)
    if probs is not None:  # Analysis: ``capture`` the 'intermediates' collection.
      self.sow('intermediates', 'attention_probs', probs)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    w_out = self.param('out', nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), ('heads', 'kv', 'embed')),
        (H, K, D), jnp.float32)
    return jnp.einsum('blhk,hkd->bld', out, w_out.astype(cfg.activation_dtype))

  def _update_cache(self, k, v, pos, seg):
    """Appends this chunk to the cache; returns the whole cache as keys.

    The cache is sized by the first (initialising) call, whose length is the
    maximum decode length; later calls append chunks of any length.
    """
    B, L = pos.shape
    is_init = not self.has_variable('cache', 'cached_key')
    ck = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cv = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    cpos = self.variable('cache', 'cached_pos', jnp.zeros, pos.shape, jnp.int32)
    cseg = self.variable('cache', 'cached_seg', jnp.zeros, seg.shape, jnp.int32)
    cidx = self.variable('cache', 'cached_index', lambda: jnp.zeros((), jnp.int32))
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
