"""PoPE: Polar Coordinate Position Embedding.

Gopalakrishnan, Csordás, Schmidhuber and Mozer 2025, "Decoupling the 'What' and
'Where' With Polar Coordinate Positional Embeddings" (arXiv 2509.10534). Every
channel c of a query at position m and of a key at position n becomes a complex
number whose magnitude is content alone and whose phase is position alone:

  q~_c = softplus(q_c) e^{i m theta_c},   k~_c = softplus(k_c) e^{i (n theta_c + delta_hc)}
  score = Re(sum_c q~_c conj(k~_c))
        = sum_c softplus(q_c) softplus(k_c) cos((m - n) theta_c - delta_hc)

with one frequency per channel, ``theta_c = base^(-c/K)`` for c < K (K of them where
RoPE has K/2, over the same range), and a learned phase bias ``delta`` ``[H, K]`` on
the keys, clamped to [-2 pi, 0] (x-transformers ``PolarEmbedding`` /
``apply_polar_pos_emb``, lucidrains/PoPE-pytorch ``PoPE``: init zeros, or uniform on
[-2 pi, 0] with ``bias_init='uniform'``). The score depends on positions only through
m - n, so PoPE is translation invariant.

``qk`` returns the real form of q~ and k~, ``[mu cos(phi), mu sin(phi)]`` (2K
channels, real parts first), so the attention's ordinary dot product, scaled by
1/sqrt(K) (K the head dim, as x-transformers), is exactly the real part above. The
cost: q and k, and so the key cache, carry twice the channels of v, and the q.k
matmuls do twice the work. Phases are float32 (``base.cos_sin``: exact angles of
integer positions); the clamp passes the gradient on its closed interval, as
``torch.clamp`` does, so the zero init is trainable. dense, blockwise, flash, pallas
and splash take q and k wider than v; cudnn does not (``jax.nn.dot_product_attention``
needs v shaped as k): PoPE declares ``qk_width = 2``, which cudnn's checks refuse.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import QK, Array, Encoding, check_base, cos_sin, sinusoid_inv_freq
from posjax.encodings.registry import register

BIAS_INITS = ('zeros', 'uniform')
BIAS_RANGE = (-2 * math.pi, 0.0)  # The phase bias is clamped to this interval.


def pope_inv_freq(head_dim: int, base: float) -> Array:
  """``base ** (-c / K)`` for c < K: one frequency per channel (float64 numpy)."""
  return sinusoid_inv_freq(2 * head_dim, base)


def clamp_bias(delta: Array) -> Array:
  """``delta`` clamped to [-2 pi, 0], with gradient 1 on the closed interval."""
  lo, hi = BIAS_RANGE
  return jnp.where((delta >= lo) & (delta <= hi), delta, jnp.clip(delta, lo, hi))


def polar(x_BxLxHxK: Array, cos_BxLxHxK: Array, sin_BxLxHxK: Array) -> Array:
  """``[mu cos(phi), mu sin(phi)]`` ``[B, L, H, 2K]`` in x's dtype, mu = softplus(x)."""
  mu_BxLxHxK = jax.nn.softplus(x_BxLxHxK.astype(jnp.float32))
  out_BxLxHx2K = jnp.concatenate([mu_BxLxHxK * cos_BxLxHxK, mu_BxLxHxK * sin_BxLxHxK], -1)
  return out_BxLxHx2K.astype(x_BxLxHxK.dtype)


def apply_pope(q_BxLxHxK: Array, k_BxSxHxK: Array, qpos_BxL: Array, kpos_BxS: Array,
               inv_freq_K: Array, delta_HxK: Array) -> tuple[Array, Array]:
  """The real forms of q~ (phase m theta) and k~ (phase n theta + delta), each
  ``[..., 2K]``; ``delta`` is used as given (``clamp_bias`` is the module's)."""
  cq_BxLxK, sq_BxLxK = cos_sin(qpos_BxL, inv_freq_K)
  ck_BxSxK, sk_BxSxK = cos_sin(kpos_BxS, inv_freq_K)
  delta_HxK = delta_HxK.astype(jnp.float32)
  cd_HxK, sd_HxK = jnp.cos(delta_HxK), jnp.sin(delta_HxK)
  ck_BxSx1xK, sk_BxSx1xK = ck_BxSxK[:, :, None], sk_BxSxK[:, :, None]
  # cos(a + d) = cos a cos d - sin a sin d; sin(a + d) = sin a cos d + cos a sin d.
  ckd_BxSxHxK = ck_BxSx1xK * cd_HxK - sk_BxSx1xK * sd_HxK
  skd_BxSxHxK = sk_BxSx1xK * cd_HxK + ck_BxSx1xK * sd_HxK
  q_out = polar(q_BxLxHxK, cq_BxLxK[:, :, None], sq_BxLxK[:, :, None])
  return q_out, polar(k_BxSxHxK, ckd_BxSxHxK, skd_BxSxHxK)


def _bias_init(kind: str):
  if kind == 'zeros':
    return nn.initializers.zeros
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, *BIAS_RANGE)


@register('pope')
class PoPE(Encoding):
  """Polar coordinate position embedding: softplus magnitudes from content, phases
  ``pos * theta_c`` from position, a learned per-head, per-channel key phase bias.

  ``base``: theta_c = base^(-c/K). ``bias_init``: 'zeros' (x-transformers' and
  PoPE-pytorch's default) or 'uniform' on [-2 pi, 0] (their ``bias_uniform_init``).
  """
  base: float = 10000.0
  bias_init: str = 'zeros'

  acts_at = (QK,)
  translation_invariant = True
  qk_width = 2
  has_params = True

  def __post_init__(self):
    check_base(self.base)
    if self.bias_init not in BIAS_INITS:
      raise ValueError(f'model.posenc_args.bias_init: got {self.bias_init!r}; allowed: '
                       f'{", ".join(BIAS_INITS)}')
    super().__post_init__()

  def setup(self):
    init = nn.with_logical_partitioning(_bias_init(self.bias_init), ('heads', 'kv'))
    self.delta_HxK = self.param('phase_bias', init, (self.num_heads, self.head_dim),
                                jnp.float32)

  def qk(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS):
    inv_freq_K = pope_inv_freq(self.head_dim, self.base)
    return apply_pope(q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, inv_freq_K,
                      clamp_bias(self.delta_HxK))
