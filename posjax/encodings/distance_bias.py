"""Logit biases that are a fixed or learned function of the distance alone:
Sandwich (fixed sinusoids) and x-transformers' dynamic position bias (an MLP).

As the biases of ``relative_bias``, each is evaluated per key block from explicit
int32 positions, in float32, reaches its per-head values only through
``per_head`` and its MLP only through ``scalar_mlp``, so the Pallas kernels
compute it in-kernel.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings import kernel_loops
from posjax.encodings.base import (BIAS, Array, Encoding, check_base, cos_sin, per_head,
                                   relative, scalar_mlp, sinusoid_inv_freq)
from posjax.encodings.registry import register
from posjax.encodings.relative_bias import _check, _torch_uniform


def sandwich_inv_freq(dim: int, base: float = 10000.0) -> np.ndarray:
  """Sandwich's frequencies ``base ** (-2i / dim)`` for i = 1 .. dim / 2 (the
  sinusoid's, shifted by one: the sum starts at i = 1), float64 numpy."""
  return sinusoid_inv_freq(dim, base) * base ** (-2 / dim)


def sandwich_head_scales(num_heads: int) -> np.ndarray:
  """``1 / h_n`` with ALiBi's ``h_n = 8 n / H``, n = 1 .. H: head n's bias is
  divided by h_n (NeMo's ``(bias - d/2) / (n * 8 / H)``), float64 numpy."""
  return num_heads / (8. * np.arange(1, num_heads + 1))


def cosine_sum(dist_BxLxS: Array, inv_freq_F: Array) -> Array:
  """``sum_f cos(dist * f)`` ``[B, L, S]`` float32 for int distances, exact angles
  (``cos_sin``). A loop over the F frequencies, not an ``[B, L, S, F]`` array: in a
  kernel a tile times F does not fit the registers, and outside one the loop
  keeps the memory of the bias itself."""
  f_F = jnp.asarray(inv_freq_F, jnp.float32)

  def term(i, acc_BxLxS):
    cos_BxLxSx1, _ = cos_sin(dist_BxLxS, kernel_loops.entry(f_F, i)[None])
    return acc_BxLxS + cos_BxLxSx1[..., 0]
  return jax.lax.fori_loop(0, f_F.shape[0], term, jnp.zeros(dist_BxLxS.shape, jnp.float32))


@register('sandwich')
class Sandwich(Encoding):
  """Sandwich (Chi, Fan, Rudnicky, Ramadge, ACL 2023, "Dissecting Transformer
  Length Extrapolation via the Lens of Receptive Field Analysis", arXiv 2212.10356):
  the inner product of the sinusoidal embeddings of the query and key positions,
  ``p_m . p_n = sum_{i=1..d/2} cos((m - n) / base^(2i/d))``, minus its value at
  distance 0 (d / 2), divided per head by ALiBi's ``h_n = 8 n / H`` (as the paper
  writes ALiBi's heads in its first figure, "the range of h is n * 8 / H"):

    bias_n(m, n') = (p_m . p_n' - d / 2) * H / (8 n).

  Zero at distance 0, <= 0 everywhere, and decaying with |m - n'| (with the
  ripples of its high frequencies; strictly monotone only over the first few
  distances). Even in m - n', so a decoder and an encoder get the same function
  of |k - q|. The formula, the shift of the frequencies (i from 1) and the head
  scaling follow NVIDIA NeMo's ``SandwichRelativePositionEmbedding``
  (nemo/collections/nlp/modules/common/megatron/position_embedding/
  sandwich_relative_position_embedding.py), which takes d as the head dimension
  (``kv_channels``); ``dim=None`` does the same. No parameters.
  """
  dim: int | None = None
  base: float = 10000.0

  acts_at = (BIAS,)
  translation_invariant = True
  bias_from_positions = True
  bias_in_kernel = True

  def __post_init__(self):
    super().__post_init__()
    _check(self.dim is None or (self.dim >= 2 and self.dim % 2 == 0), 'dim',
           'None (the head dim) or an even integer >= 2', self.dim)
    check_base(self.base)

  @property
  def sinusoid_dim(self) -> int:
    return self.head_dim if self.dim is None else self.dim

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    d = self.sinusoid_dim
    dist_BxLxS = jnp.abs(relative(qpos_BxL, kpos_BxS))
    sandwich_Bx1xLxS = (cosine_sum(dist_BxLxS, sandwich_inv_freq(d, self.base)) - d / 2)[:, None]
    scale_H = per_head(jnp.asarray(sandwich_head_scales(self.num_heads), jnp.float32))
    return scale_H[:, None, None] * sandwich_Bx1xLxS, carry


@register('dynamic_position_bias')
class DynamicPositionBias(Encoding):
  """x-transformers' ``DynamicPositionBias`` (lucidrains/x-transformers,
  x_transformers/x_transformers.py; after Wang et al.'s CrossFormer): an MLP from
  the relative distance ``q - k`` (x-transformers' ``i - j``; optionally
  ``sign(d) * log(|d| + 1)``, ``log_distance``) to one bias per head, one instance
  for the whole model (x-transformers builds it once in ``AttentionLayers``).

  x-transformers' MLP is ``1 -> dim -> ... -> heads`` with SiLU (depth 2 by
  default, optional LayerNorm). Here it is the one-hidden-layer ReLU form that
  ``scalar_mlp`` computes in the Pallas kernels, ``relu(d * w1 + b1) @ w2``, width
  ``mlp_width`` (x-transformers' ``dim // 4`` of the model dim by default), with
  PyTorch's Linear init as there; the output layer has no bias (a per-head
  constant cancels in the softmax, as FIRE's). The distance is signed, so an
  encoder tells the two directions apart; a decoder's visible keys have
  ``q - k >= 0``.
  """
  mlp_width: int | None = None
  log_distance: bool = False

  acts_at = (BIAS,)
  shared_across_layers = True
  translation_invariant = True
  has_params = True
  bias_from_positions = True
  bias_in_kernel = True

  def __post_init__(self):
    super().__post_init__()
    _check(self.mlp_width is None or self.mlp_width >= 1, 'mlp_width',
           'None (model_dim // 4) or an integer >= 1', self.mlp_width)
    _check(isinstance(self.log_distance, bool), 'log_distance', 'True or False',
           self.log_distance)

  @property
  def width(self) -> int:
    return max(self.model_dim // 4, 1) if self.mlp_width is None else self.mlp_width

  def setup(self):
    p = lambda name, init, shape, names: self.param(
        name, nn.with_logical_partitioning(init, names), shape, jnp.float32)
    w = self.width
    self.w1 = p('w1', _torch_uniform(1), (w,), ('mlp',))
    self.b1 = p('b1', _torch_uniform(1), (w,), ('mlp',))
    self.w2 = p('w2', _torch_uniform(w), (w, self.num_heads), ('mlp', 'heads'))

  def mlp_input(self, qpos_BxL: Array, kpos_BxS: Array) -> Array:
    """``q - k`` (or its signed log) as float32 ``[B, L, S]``."""
    d_BxLxS = (-relative(qpos_BxL, kpos_BxS)).astype(jnp.float32)
    if not self.log_distance:
      return d_BxLxS
    return jnp.sign(d_BxLxS) * jnp.log1p(jnp.abs(d_BxLxS))

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, k_BxSxHxK, mask_BxLxS
    f32 = lambda x: x.astype(jnp.float32)
    w2 = per_head(f32(self.w2), axis=1)
    return scalar_mlp(self.mlp_input(qpos_BxL, kpos_BxS), f32(self.w1), f32(self.b1),
                      w2), carry
