"""FoX: the Forgetting Transformer (Lin, Nikishin, He, Courville, ICLR 2025,
"Forgetting Transformer: Softmax Attention with a Forget Gate").

Every token t has a forget gate per head from the attention layer's input,
``f_t = sigmoid(w_h . x_t + b_h)``, and the logit of query i on key j gets

  D_ij = sum_{l = j+1 .. i} log f_l          (0 for j = i),

the data-dependent decay of a forget gate inside softmax attention; no other position
signal (the paper's FoX uses no RoPE). ``w`` and ``b`` are the official code's
``fgate_proj`` (``nn.Linear(hidden, heads)``, PyTorch's init, U(+-1/sqrt(D))).

The gates come from the ``tokens`` hook (``log f_t``, ``[B, L, H, 1]``), so they ride
with the keys through every implementation and the KV cache. ``D_ij`` is the sum of
``log f`` over the keys after j that query i may see (causal: j < l <= i), so
``bias`` needs no ``[L, S]`` input: key blocks are visited from the last to the
first, the carry holds each query's sum over the blocks already visited, and a
block adds its own keys after j with a reversed cumulative sum; memory stays linear
in blockwise, flash and cached decoding. In a packed row other documents' keys are
masked and not counted; within a window the keys between j and i are all visible.
The gates travel in the activation dtype (bf16 rounds ``log f_t`` to 3 digits); the
sums are float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import BIAS, TOKENS, Array, Encoding
from posjax.encodings.registry import register
from posjax.encodings.relative_bias import _torch_uniform


def forget_bias(log_f_BxHxS: Array, mask_BxLxS: Array, carry_BxHxL: Array
                ) -> tuple[Array, Array]:
  """One key block's ``D`` ``[B, H, L, S]`` and the carry after it: ``carry_i +
  sum of log f over the allowed keys of the block after j``."""
  allowed_log_f = jnp.where(mask_BxLxS[:, None], log_f_BxHxS[:, :, None, :], 0.0)
  after = jnp.flip(jnp.cumsum(jnp.flip(allowed_log_f, -1), -1), -1) - allowed_log_f
  return carry_BxHxL[..., None] + after, carry_BxHxL + allowed_log_f.sum(-1)


@register('fox')
class ForgettingAttention(Encoding):
  """Forget gates ``sigmoid(w_h . x_t + b_h)`` and the bias ``sum log f`` between
  key and query (see the module docstring)."""
  acts_at = (TOKENS, BIAS)
  translation_invariant = True
  reads_positions = False
  has_params = True

  def setup(self):
    init = _torch_uniform(self.model_dim)
    self.w_DxH = self.param('fgate_w', nn.with_logical_partitioning(init, ('embed', 'heads')),
                            (self.model_dim, self.num_heads), jnp.float32)
    self.b_H = self.param('fgate_b', nn.with_logical_partitioning(init, ('heads',)),
                          (self.num_heads,), jnp.float32)

  def tokens(self, x_BxLxD):
    logit_BxLxH = jnp.einsum('bld,dh->blh', x_BxLxD.astype(jnp.float32), self.w_DxH) + self.b_H
    return jax.nn.log_sigmoid(logit_BxLxH)[..., None]

  def init_carry(self, q_BxLxHxK):
    B, L, H, _ = q_BxLxHxK.shape
    return jnp.zeros((B, H, L), jnp.float32)

  def bias(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS, carry):
    del q_BxLxHxK, qpos_BxL, kpos_BxS
    log_f_BxHxS = jnp.swapaxes(k_BxSxHxK[..., self.head_dim].astype(jnp.float32), 1, 2)
    return forget_bias(log_f_BxHxS, mask_BxLxS, carry)
