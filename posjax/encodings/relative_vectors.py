"""Relative position vectors inside the attention scores.

  shaw            Shaw et al. 2018, "Self-Attention with Relative Position
                  Representations": e_ij = q_i (k_j + aK_ij) / sqrt(K) and
                  z_i = sum_j p_ij (v_j + aV_ij), a_ij = w[clip(j - i, -R, R)].
  transformer_xl  Dai et al. 2019, "Transformer-XL", sec. 3.3:
                  (q_i + u) k_j + (q_i + v) W_R R_{i-j}, R sinusoidal.

Attention scales q.k by 1/sqrt(K) but not the bias, so both bias hooks divide
their q.a terms by sqrt(head_dim) themselves: every term has the q.k scale.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import (BIAS, QK, VALUES, Encoding, check_base, cos_sin, relative,
                                   sinusoid_inv_freq)
from posjax.encodings.registry import register

_small = nn.initializers.normal(0.02)  # Transformer-XL's init of u and v.


@register('shaw')
class Shaw(Encoding):
  """Per-layer tables aK, aV ``[2R+1, K]`` shared across heads (as the paper).

  Initialised as tensor2tensor's relative embeddings (glorot uniform, std
  ~0.15 for K = 64): next to keys and values of unit scale, as there. (At
  normal(0.02) the relative term was 2 % of q.k and a short run gained nothing.)
  """
  max_relative_position: int = 16
  acts_at = (BIAS, VALUES)
  translation_invariant = True
  has_params = True

  def __post_init__(self):
    super().__post_init__()
    if not (isinstance(self.max_relative_position, int) and self.max_relative_position > 0):
      raise ValueError('model.posenc_args.max_relative_position: got '
                       f'{self.max_relative_position!r}; allowed: a positive integer')

  def setup(self):
    shape = (2 * self.max_relative_position + 1, self.head_dim)
    init = nn.with_logical_partitioning(nn.initializers.glorot_uniform(), ('relpos', 'kv'))
    self.ak_RxK = self.param('a_k', init, shape, jnp.float32)
    self.av_RxK = self.param('a_v', init, shape, jnp.float32)

  def _index(self, qpos_BxL, kpos_BxS):
    """Row of the tables for each pair: clip(j - i, -R, R) + R, ``[B, L, S]``."""
    r = self.max_relative_position
    return jnp.clip(relative(qpos_BxL, kpos_BxS), -r, r) + r

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del k_BxSxHxK, mask_BxLxS
    qa_BxHxLxR = jnp.einsum('blhk,rk->bhlr', q_BxLxHxK.astype(jnp.float32), self.ak_RxK)
    idx_BxLxS = self._index(qpos_BxL, kpos_BxS)
    idx_BxHxLxS = jnp.broadcast_to(idx_BxLxS[:, None],
                                   (qa_BxHxLxR.shape[0], qa_BxHxLxR.shape[1], *idx_BxLxS.shape[1:]))
    bias_BxHxLxS = jnp.take_along_axis(qa_BxHxLxR, idx_BxHxLxS, axis=-1)
    return bias_BxHxLxS / jnp.sqrt(jnp.float32(self.head_dim)), carry

  def values(self, p_BxHxLxS, qpos_BxL, kpos_BxS):
    """sum_j p_ij aV[idx_ij]: ``[B, L, H, K]`` in p's dtype (float32)."""
    onehot_BxLxSxR = jax.nn.one_hot(self._index(qpos_BxL, kpos_BxS),
                                    2 * self.max_relative_position + 1, dtype=jnp.float32)
    pr_BxHxLxR = jnp.einsum('bhls,blsr->bhlr', p_BxHxLxS.astype(jnp.float32), onehot_BxLxSxR)
    return jnp.einsum('bhlr,rk->blhk', pr_BxHxLxR, self.av_RxK).astype(p_BxHxLxS.dtype)


@register('transformer_xl')
class TransformerXL(Encoding):
  """R_d is the interleaved sinusoid of the signed distance d = i - j
  (R[2f] = sin(d w_f), R[2f+1] = cos(d w_f), w_f = base^(-2f/rel_dim)), the
  same as ``absolute.sinusoidal_embedding(i - j, rel_dim)``. The term is
  factorised with sin(a-b) = sin a cos b - cos a sin b (and cos likewise) into
  query and key features, so a block costs one [L, S] einsum over rel_dim.
  u enters through ``qk`` (q + u); ``bias`` receives q + u and removes u again.
  W_R is initialised as the attention's key projection (lecun normal), so
  W_R R is at the scale of k; u and v at normal(0.02) as the paper's code.
  (W_R at normal(0.02) made the position term ~0.16 of q.k at D = 128.)
  """
  rel_dim: int | None = None  # d_R; None: model_dim.
  base: float = 10000.0
  acts_at = (QK, BIAS)
  translation_invariant = True
  has_params = True

  def __post_init__(self):
    super().__post_init__()
    if self.rel_dim is not None and not (isinstance(self.rel_dim, int) and self.rel_dim > 0
                                         and self.rel_dim % 2 == 0):
      raise ValueError(f'model.posenc_args.rel_dim: got {self.rel_dim!r}; allowed: '
                       'None (model_dim) or a positive even integer')
    check_base(self.base)
    if self.rel_dim is None and self.model_dim % 2:
      raise ValueError(f'model.model_dim: got {self.model_dim}; allowed: an even '
                       'integer for posenc=transformer_xl (or set posenc_args.rel_dim)')

  def setup(self):
    hk = nn.with_logical_partitioning(_small, ('heads', 'kv'))
    self.u_HxK = self.param('u', hk, (self.num_heads, self.head_dim), jnp.float32)
    self.v_HxK = self.param('v', hk, (self.num_heads, self.head_dim), jnp.float32)
    self.wr_RxHxK = self.param(
        'w_r', nn.with_logical_partitioning(
            nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)), ('embed', 'heads', 'kv')),
        (self.rel_dim or self.model_dim, self.num_heads, self.head_dim), jnp.float32)

  def qk(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS):
    del qpos_BxL, kpos_BxS
    q_BxLxHxK = (q_BxLxHxK.astype(jnp.float32) + self.u_HxK).astype(q_BxLxHxK.dtype)
    return q_BxLxHxK, k_BxSxHxK

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del k_BxSxHxK, mask_BxLxS
    qv_BxLxHxK = q_BxLxHxK.astype(jnp.float32) - self.u_HxK + self.v_HxK
    # (q_i + v) W_R: channel 2f multiplies sin(d w_f) (a), 2f+1 multiplies cos (b).
    qw_BxLxHxR = jnp.einsum('blhk,rhk->blhr', qv_BxLxHxK, self.wr_RxHxK)
    a_BxLxHxF, b_BxLxHxF = qw_BxLxHxR[..., 0::2], qw_BxLxHxR[..., 1::2]
    # Positions relative to an anchor per row: exact integers, so the result
    # depends on offsets only and float32 phases stay small.
    anchor_Bx1 = kpos_BxS[:, :1]
    inv_freq_F = sinusoid_inv_freq(qw_BxLxHxR.shape[-1], self.base)
    cq, sq = (x[:, :, None] for x in cos_sin(qpos_BxL - anchor_Bx1, inv_freq_F))
    ck_BxSxF, sk_BxSxF = cos_sin(kpos_BxS - anchor_Bx1, inv_freq_F)
    # a sin(i-j) + b cos(i-j) = cos_j (a sin_i + b cos_i) + sin_j (b sin_i - a cos_i).
    fq_BxLxHx2F = jnp.concatenate([a_BxLxHxF * sq + b_BxLxHxF * cq,
                                   b_BxLxHxF * sq - a_BxLxHxF * cq], -1)
    fk_BxSx2F = jnp.concatenate([ck_BxSxF, sk_BxSxF], -1)
    bias_BxHxLxS = jnp.einsum('blhf,bsf->bhls', fq_BxLxHx2F, fk_BxSx2F)
    return bias_BxHxLxS / jnp.sqrt(jnp.float32(self.head_dim)), carry
