"""QK-norm and per-query temperatures: model options beside every encoding.

``model.qk_norm``:
  'none';
  'rms': RMSNorm of each head's q and k over the head dim *before* the position
         transform (Gemma 3; OLMo 2 normalises the whole projection instead);
  'l2':  L2 normalisation of q and k *after* it (Llama 4, whose RoPE layers
         then attend with the usual 1/sqrt(K) scale).
``model.qk_norm_scale``: 'learned' (a per-channel scale, init 1, shared by the
heads, as Gemma 3's ``q_norm`` / ``k_norm``) or 'fixed' (none).

``model.temperature`` multiplies each query, so its content logits ``q . k``
(not an encoding's additive bias), by ``t``:
  'none';
  'logn':   Qwen's log-n scaling, ``encodings.logn_attention_scale(p, train_len)``;
  'llama4': Llama 4's temperature tuning of its NoPE layers,
            ``encodings.llama4_attention_scale(p, floor_scale, attn_scale)``;
  'ssmax':  Scalable-Softmax (Nakanishi 2025): ``t = s_h * log(n)``, n the number
            of keys the query may attend (the mask's row count: documents,
            windows and the cache included), ``s_h`` learned per head,
            initialised to ``1 / log(max_len)`` (ours: t = 1 at the training
            length, so a fresh model attends as softmax does there).
``model.temperature_args``: ``train_len`` (logn; default ``max_len``),
``floor_scale`` (8192) and ``attn_scale`` (0.1) (llama4). Position math is float32.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax import encodings

QK_NORMS = ('none', 'rms', 'l2')
QK_NORM_SCALES = ('learned', 'fixed')
TEMPERATURES = ('none', 'logn', 'llama4', 'ssmax')
TEMPERATURE_ARGS = {'none': (), 'logn': ('train_len',), 'llama4': ('floor_scale', 'attn_scale'),
                    'ssmax': ()}
_EPS = 1e-6


def _normalise(module: nn.Module, cfg, x, name: str, kind: str):
  x32 = x.astype(jnp.float32)
  if kind == 'rms':
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 ** 2, -1, keepdims=True) + _EPS)
  else:
    x32 = x32 * jax.lax.rsqrt(jnp.sum(x32 ** 2, -1, keepdims=True) + _EPS)
  if cfg.qk_norm_scale == 'learned':
    x32 = x32 * module.param(name, nn.with_logical_partitioning(nn.initializers.ones, ('kv',)),
                             (x.shape[-1],), jnp.float32)
  return x32.astype(x.dtype)


def qk_norm(module: nn.Module, cfg, q, k, *, stage: str):
  """q and k normalised if ``cfg.qk_norm`` acts at ``stage`` ('before' or
  'after' the encoding's ``qk``)."""
  if cfg.qk_norm != {'before': 'rms', 'after': 'l2'}[stage]:
    return q, k
  return (_normalise(module, cfg, q, 'q_norm', cfg.qk_norm),
          _normalise(module, cfg, k, 'k_norm', cfg.qk_norm))


def query_temperature(module: nn.Module, cfg, qpos_BxL, count):
  """``t`` ``[B, L, H, 1]`` float32 for ``cfg.temperature``, or None; ``count()``
  gives the number of keys each query may attend ``[B, L]`` (ssmax's n)."""
  args = cfg.temperature_kwargs()
  if cfg.temperature == 'none':
    return None
  if cfg.temperature == 'logn':
    t = encodings.logn_attention_scale(qpos_BxL, train_len=args.get('train_len', cfg.max_len))
  elif cfg.temperature == 'llama4':
    t = encodings.llama4_attention_scale(qpos_BxL, **args)
  else:
    s_H = module.param('ssmax', nn.with_logical_partitioning(
        nn.initializers.constant(1 / math.log(max(cfg.max_len, 2))), ('heads',)),
        (cfg.num_heads,), jnp.float32)
    n_BxL = jnp.maximum(count(), 1).astype(jnp.float32)
    return (jnp.log(n_BxL)[..., None] * s_H)[..., None]
  return jnp.asarray(t, jnp.float32)[..., None, None]
