"""Multi-head attention that asks its positional encoding for what it needs, and
the dispatcher that picks the implementation ``model.attention`` means.

The implementations live one per module in ``posjax.models.kernels``, all on the
same block math (``kernels.blocks``) and one contract (``IMPLEMENTATIONS``: a
function of the encoding, q, k, v, positions, slots and segments, and the model
config, returning the output and, for ``dense`` only, the probabilities):
``dense`` and ``blockwise`` (``kernels.blockwise``: the reference, and its scan
over key blocks, linear memory), ``flash`` (``kernels.flash``: queries tiled too,
empty tiles skipped, its own backward pass), ``pallas`` (``kernels.pallas``: flash
as Pallas kernels with the bias computed inside), and ``cudnn`` / ``splash``
(``kernels.vendor``: the vendors' fused kernels, for encodings with no bias or
value hook). Attention never branches on encoding names.
"""
from __future__ import annotations

import dataclasses

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models import cache, temperature
from posjax.models.config import ModelConfig
from posjax.models.kernels import blocks, blockwise, flash, pallas, tile_sizes, vendor

# ``attention='auto'``: the platform's fused kernel (``kernels.vendor``:
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
  linear = 'flash'  # The linear-memory choice above AUTO_DENSE_MAX keys.
  if chosen == 'auto':
    kernel = vendor.for_platform()
    why = vendor.why_not(kernel, cfg, num_keys) if kernel else 'no fused kernel here'
    chosen = kernel if why is None else None
  if chosen in vendor.PLATFORMS and num_queries != num_keys:
    chosen, why = None, 'cached decoding'
  if chosen is None:
    chosen = 'dense' if num_keys <= AUTO_DENSE_MAX else linear
    why = f'{why}; dense up to {AUTO_DENSE_MAX} keys, {linear} above'
  if (cfg.attention, num_keys, chosen) not in _announced:
    _announced.add((cfg.attention, num_keys, chosen))
    logging.info('attention=%s: %s for %d keys on %s (%s)', cfg.attention, chosen, num_keys,
                 jax.default_backend(), why or 'the fused kernel serves this config')
  return chosen


def _dense(cfg: ModelConfig, *args, span, sink):
  return blockwise.attend(*args, span=span, block_size=None, scale=cfg.head_dim ** -0.5,
                          sink_H=sink, normalizer=cfg.normalizer)


def _blockwise(cfg: ModelConfig, *args, span, sink):
  block, _ = tile_sizes.tiles(cfg, 'blockwise', args[1].shape[1])
  return blockwise.attend(*args, span=span, block_size=block, scale=cfg.head_dim ** -0.5,
                          sink_H=sink, normalizer=cfg.normalizer)


def _flash(cfg: ModelConfig, *args, span, sink):
  block_q, block_k = tile_sizes.tiles(cfg, 'flash', args[1].shape[1])
  return flash.attend(*args, span=span, block_q=block_q, block_k=block_k,
                      scale=cfg.head_dim ** -0.5, sink_H=sink, normalizer=cfg.normalizer), None


def _pallas(cfg: ModelConfig, *args, span, sink):
  block_q, block_k = tile_sizes.tiles(cfg, 'pallas', args[1].shape[1])
  return pallas.attend(*args, span=span, block_q=block_q, block_k=block_k,
                       scale=cfg.head_dim ** -0.5, sink_H=sink,
                       interpret=vendor.emulated()), None


def _vendor(kernel: str):
  def run(cfg: ModelConfig, enc, q, k, v, qpos, kpos, qidx, kidx, qseg, kseg, *, span, sink):
    return vendor.attend(kernel, q, k, v, qseg, kseg, causal=span.causal,
                         scale=cfg.head_dim ** -0.5), None
  return run


# ``model.attention`` -> ``fn(cfg, enc, q, k, v, qpos, kpos, qidx, kidx, qseg, kseg, *,
# span, sink) -> (out [B, L, H, Kv], probabilities [B, H, L, S] or None)``: ``span``
# (kernels.span.Span) says which slots each query sees, ``sink`` is the learned
# per-head sink logit ``[H]`` or None.
IMPLEMENTATIONS = {'dense': _dense, 'blockwise': _blockwise, 'flash': _flash,
                   'pallas': _pallas, 'cudnn': _vendor('cudnn'), 'splash': _vendor('splash')}


def _with_tokens(q, k, tokens_BxLxHxF):
  """The encoding's per-token values as F extra key channels, zeros on the queries
  (q . k unchanged): tiled and cached with the keys, read by ``bias`` from k."""
  if tokens_BxLxHxF is None:
    return q, k
  zeros = jnp.zeros(q.shape[:-1] + tokens_BxLxHxF.shape[-1:], q.dtype)
  return (jnp.concatenate([q, zeros], -1),
          jnp.concatenate([k, tokens_BxLxHxF.astype(k.dtype)], -1))


class Attention(nn.Module):
  """Self-attention with an optional KV cache for autoregressive decoding
  (``models.cache``), over the keys ``cfg.span`` allows (``kernels.span``)."""
  cfg: ModelConfig
  encoding: Encoding

  @nn.compact
  def __call__(self, x_BxLxD, pos_BxL, seg_BxL, rows_3xBxL=None, *, decode: bool = False):
    """``rows_3xBxL``: the position rows an encoding with ``position_rows = 3`` reads in
    place of ``pos`` (keys are cached rotated, so decoding needs no cached rows)."""
    cfg = self.cfg
    D, H, K = cfg.model_dim, cfg.num_heads, cfg.head_dim
    init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    q, k, v = (
        jnp.einsum('bld,dhk->blhk', x_BxLxD, self.param(
            name, nn.with_logical_partitioning(init, ('embed', 'heads', 'kv')),
            (D, H, K), jnp.float32).astype(cfg.activation_dtype))
        for name in ('query', 'key', 'value'))
    q, k = temperature.qk_norm(self, cfg, q, k, stage='before')
    qk_pos = rows_3xBxL if self.encoding.position_rows == 3 else pos_BxL
    q, k = self.encoding.qk(q, k, qk_pos, qk_pos)
    q, k = temperature.qk_norm(self, cfg, q, k, stage='after')
    q, k = _with_tokens(q, k, self.encoding.tokens(x_BxLxD))
    k, v, kpos, kseg, kidx, idx, span = self._keys(k, v, pos_BxL, seg_BxL, decode)
    t = temperature.query_temperature(self, cfg, pos_BxL, lambda: blocks.count_allowed(
        idx, kidx, seg_BxL, kseg, span, pos_BxL, kpos))
    if t is not None:
      q = (q.astype(jnp.float32) * t).astype(q.dtype)
    sink = None
    if cfg.sinks == 'learned':  # gpt-oss: one logit per head in the softmax's denominator.
      sink = self.param('sinks', nn.with_logical_partitioning(nn.initializers.zeros, ('heads',)),
                        (H,), jnp.float32)
    args = (self.encoding, q, k, v, pos_BxL, kpos, idx, kidx, seg_BxL, kseg)
    impl = choose(cfg, q.shape[1], k.shape[1])
    if impl in ('flash', 'pallas') and self.is_initializing():  # Init makes the encoding's
      impl = 'blockwise'  # params, which flash applies its hooks to; blockwise: linear memory.
    out, probs = IMPLEMENTATIONS[impl](cfg, *args, span=span, sink=sink)
    if probs is not None:  # Analysis: ``capture`` the 'intermediates' collection.
      self.sow('intermediates', 'attention_probs', probs)
    out = nn.with_logical_constraint(out, ('batch', 'length', 'heads', 'kv'))
    w_out = self.param('out', nn.with_logical_partitioning(
        nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2), ('heads', 'kv', 'embed')),
        (H, K, D), jnp.float32)
    return jnp.einsum('blhk,hkd->bld', out, w_out.astype(cfg.activation_dtype))

  def _keys(self, k, v, pos_BxL, seg_BxL, decode: bool):
    """``(k, v, kpos, kseg, kidx, qidx, span)``: this call's keys (the cache's, when
    decoding: rolling where the layer has a window or chunk) and query slots."""
    B, L = pos_BxL.shape
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    if not decode:
      return k, v, pos_BxL, seg_BxL, idx, idx, self.cfg.span
    if self.cfg.span.local:
      return cache.rolling(self, self.cfg, k, v, pos_BxL, seg_BxL) + (
          dataclasses.replace(self.cfg.span, aligned=False),)
    return cache.full(self, k, v, pos_BxL, seg_BxL) + (self.cfg.span,)
