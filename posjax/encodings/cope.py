"""CoPE: Golovneva et al. 2024, "Contextual Position Encoding".

Gates g_ij = sigmoid(q_i k_j / sqrt(K)) on allowed pairs; the contextual
position p_ij = sum_{t >= j} g_it (allowed keys from j up to the query) is
clipped to npos_max - 1, and the logit term interpolates q_i E[floor p] and
q_i E[ceil p] with weight p - floor p. Differences from the reference code:
the term is scaled by 1/sqrt(K) like q.k (the reference adds q.E unscaled; with
a learned E this is only a reparametrisation). E starts at zero, as there.

Blockwise attention visits key blocks last to first, so the carry ``[B, H, L]``
holds the gate sum of the keys to the right already visited; in one dense block
p is the exact suffix sum. For bidirectional attention (causal=False) the
suffix sum runs to the end of the sequence (the last allowed key), so
positions count from the end rather than from the query.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import BIAS, Encoding
from posjax.encodings.registry import register


@register('cope')
class CoPE(Encoding):
  """Per-layer position embeddings E ``[npos_max, K]`` shared across heads."""
  npos_max: int = 64
  acts_at = (BIAS,)
  translation_invariant = True
  reads_positions = False  # Its positions come from the gates.
  has_params = True

  def __post_init__(self):
    super().__post_init__()
    if not (isinstance(self.npos_max, int) and self.npos_max > 1):
      raise ValueError(f'model.posenc_args.npos_max: got {self.npos_max!r}; '
                       'allowed: an integer > 1')

  def setup(self):
    self.e_NxK = self.param(
        'pos_emb', nn.with_logical_partitioning(nn.initializers.zeros, ('relpos', 'kv')),
        (self.npos_max, self.head_dim), jnp.float32)

  def init_carry(self, q_BxLxHxK):
    b, l, h, _ = q_BxLxHxK.shape
    return jnp.zeros((b, h, l), jnp.float32)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry_BxHxL):
    del qpos_BxL, kpos_BxS
    scale = jnp.sqrt(jnp.float32(self.head_dim))
    q_BxLxHxK = q_BxLxHxK.astype(jnp.float32)
    logits_BxHxLxS = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK,
                                k_BxSxHxK.astype(jnp.float32)) / scale
    g_BxHxLxS = jax.nn.sigmoid(logits_BxHxLxS) * mask_BxLxS[:, None]
    # Suffix sum within the block plus the gates of later blocks.
    suffix_BxHxLxS = jnp.flip(jnp.cumsum(jnp.flip(g_BxHxLxS, -1), -1), -1)
    p_BxHxLxS = jnp.minimum(carry_BxHxL[..., None] + suffix_BxHxLxS, self.npos_max - 1)
    qe_BxHxLxN = jnp.einsum('blhk,nk->bhln', q_BxLxHxK, self.e_NxK) / scale
    lo_BxHxLxS = jnp.floor(p_BxHxLxS)
    w_BxHxLxS = p_BxHxLxS - lo_BxHxLxS
    lo = jnp.take_along_axis(qe_BxHxLxN, lo_BxHxLxS.astype(jnp.int32), axis=-1)
    hi = jnp.take_along_axis(qe_BxHxLxN, jnp.ceil(p_BxHxLxS).astype(jnp.int32), axis=-1)
    bias_BxHxLxS = lo + w_BxHxLxS * (hi - lo)
    return bias_BxHxLxS, carry_BxHxL + g_BxHxLxS.sum(-1)
