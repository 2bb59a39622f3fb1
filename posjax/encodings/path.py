"""PaTH attention (Yang, Shen, Wen, Tan, Mishra, Ren, Panda, Kim, NeurIPS 2025,
"PaTH Attention: Position Encoding via Accumulating Householder Transformations").

Every token t gives each head a Householder-like transform ``H_t = I - beta_t w_t
w_t^T`` from the attention layer's input: ``w_t`` the L2-normalised projection
``W_w x_t`` (K per head), ``beta_t = 2 sigmoid(u_h . x_t + b_h)`` in (0, 2). The
score of query i on key j carries the key to i through every transform between them:

  s_ij = q_i^T (H_i H_{i-1} ... H_{j+1}) k_j,     s_ii = q_i . k_i,

data-dependent where RoPE's rotation depends on i - j only. Causal only.

``tokens`` gives ``[w_t, beta_t]`` (K + 1 values per head), which ride as extra key
channels through every implementation and the cache. ``bias`` returns ``(s - q.k) /
sqrt(K)``. Key blocks are visited from the last to the first and the carry is each
query transformed through the keys already visited, ``H_{j+1} ... H_i q_i`` (the
issue's "carry is the query transformed through the blocks already visited"); inside
a block a scan over its keys, nearest first, reads the score with the current carry
and then applies that key's ``H`` (where the key is visible to the query: the same
document, not after it). Cost: two K-vectors per (query, key) pair (the score and the
update), so about twice softmax attention's q.k work, but sequential over the keys of
a block; memory is a ``[B, L, H, K]`` carry, linear in length (the paper's
UT-transform kernel, which makes it blockwise-parallel, is not reproduced). The
``w``, ``beta`` channels travel in the activation dtype; the products are float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import BIAS, TOKENS, Array, Encoding
from posjax.encodings.registry import register

_f32 = jnp.float32


def path_scores(c_BxLxHxK: Array, k_BxSxHxK: Array, w_BxSxHxK: Array, beta_BxSxH: Array,
                mask_BxLxS: Array) -> tuple[Array, Array]:
  """Scores ``[B, H, L, S]`` of one key block for queries already transformed to
  ``c`` (through the keys after the block), and ``c`` after the block's keys."""
  def key(c, xs):  # Keys from the last to the first.
    k_s, w_s, beta_s, mask_s = xs
    score_BxHxL = jnp.einsum('blhk,bhk->bhl', c, k_s)
    proj_BxLxH = jnp.einsum('blhk,bhk->blh', c, w_s)
    moved = c - (beta_s[:, None] * proj_BxLxH)[..., None] * w_s[:, None]
    return jnp.where(mask_s[:, :, None, None], moved, c), score_BxHxL
  xs = tuple(jnp.flip(jnp.moveaxis(a, 1, 0), 0) for a in
             (k_BxSxHxK, w_BxSxHxK, beta_BxSxH, jnp.swapaxes(mask_BxLxS, 1, 2)))
  c, scores_SxBxHxL = jax.lax.scan(key, c_BxLxHxK, xs)
  return jnp.moveaxis(jnp.flip(scores_SxBxHxL, 0), 0, -1), c


@register('path')
class PaTH(Encoding):
  """Accumulated Householder transforms between key and query (module docstring)."""
  acts_at = (TOKENS, BIAS)
  causal_only = True
  translation_invariant = True
  reads_positions = False
  has_params = True

  def __post_init__(self):
    if not self.causal:
      raise ValueError('model.kind: an encoder (bidirectional) with posenc=path; allowed: '
                       'causal attention (decoder): the transforms run from key to query')
    super().__post_init__()

  def setup(self):
    D, H, K = self.model_dim, self.num_heads, self.head_dim
    p = lambda name, init, shape, names: self.param(  # noqa: E731
        name, nn.with_logical_partitioning(init, names), shape, _f32)
    self.w_proj = p('w_proj', nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                    (D, H, K), ('embed', 'heads', 'kv'))
    self.beta_w = p('beta_w', nn.initializers.lecun_normal(), (D, H), ('embed', 'heads'))
    self.beta_b = p('beta_b', nn.initializers.zeros, (H,), ('heads',))

  def tokens(self, x_BxLxD):
    x = x_BxLxD.astype(_f32)
    w_BxLxHxK = jnp.einsum('bld,dhk->blhk', x, self.w_proj)
    w_BxLxHxK = w_BxLxHxK * jax.lax.rsqrt(jnp.sum(w_BxLxHxK ** 2, -1, keepdims=True) + 1e-6)
    beta_BxLxH = 2 * jax.nn.sigmoid(jnp.einsum('bld,dh->blh', x, self.beta_w) + self.beta_b)
    return jnp.concatenate([w_BxLxHxK, beta_BxLxH[..., None]], -1)

  def init_carry(self, q_BxLxHxK):
    return q_BxLxHxK[..., :self.head_dim].astype(_f32)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del qpos_BxL, kpos_BxS
    K = self.head_dim
    k = k_BxSxHxK.astype(_f32)
    scores, carry = path_scores(carry, k[..., :K], k[..., K:2 * K], k[..., 2 * K], mask_BxLxS)
    plain = jnp.einsum('blhk,bshk->bhls', q_BxLxHxK[..., :K].astype(_f32), k[..., :K])
    return (scores - plain) * K ** -0.5, carry
