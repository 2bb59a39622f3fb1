"""Stick-breaking attention (Tan, Shen, Yang, Courville, Panda: "Scaling
Stick-Breaking Attention", ICLR 2025): no softmax. Query i takes from its nearest
allowed key a share ``beta_ij = sigmoid(z_ij)`` of a unit stick, from the next
nearest the same share of what is left, and so on:

  A_ij = sigmoid(z_ij) * prod_{k allowed for i, j < k} (1 - sigmoid(z_ik)),
  out_i = sum_j A_ij v_j,

``z_ij`` the logit (``q . k / sqrt(K)`` plus the encoding's bias). The weights sum to
at most 1; what is left is attended to nothing (the output is ``sum_j A_ij v_j``, as
the paper's equations and flash-linear-attention's layer; the authors' own model code
also adds ``(1 - sum_j A_ij) v_i``). The allowed keys are those before the query (the
paper: "for each token before the current"; ``model.attend_current=True`` adds the
query's own key, the kernels' ``attend_current``: ``ModelConfig.span`` excludes it
otherwise); keys of other documents or outside a window are not counted. The product
is over the allowed keys after j, in log space:
``log A_ij = log sigmoid(z_ij) + sum_k log sigmoid(-z_ik)``.

Key blocks are visited from the last to the first (``blockwise.attend``); the carry
holds, per query, the sum of ``log sigmoid(-z)`` over the keys of the blocks already
visited, and a block adds its own keys after j with a reversed cumulative sum. So
memory is linear in length as in softmax blockwise attention, and it combines with
every encoding (bias, carry and value hooks as there). Keys must sit in slot order
within a block: true of a full pass, of the full cache and of the rolling cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.encodings.base import Encoding
from posjax.models.kernels.blocks import NEG

_f32 = jnp.float32


def init(enc: Encoding, q_BxLxHxK, Kv: int):
  """The state before the first (last) key block: ``(log_rest [B, H, L], acc, enc_carry)``."""
  B, L, H, _ = q_BxLxHxK.shape
  return (jnp.zeros((B, H, L), _f32), jnp.zeros((B, L, H, Kv), _f32),
          enc.init_carry(q_BxLxHxK))


def log_weights(z_BxHxLxS, mask_BxLxS, log_rest_BxHxL):
  """One key block's ``log A`` (``NEG`` where masked) and the carry for the block
  before it: ``log_rest`` plus the block's ``sum log sigmoid(-z)`` over allowed keys."""
  allowed = mask_BxLxS[:, None]
  log_keep = jnp.where(allowed, jax.nn.log_sigmoid(-z_BxHxLxS), 0.0)
  after = jnp.flip(jnp.cumsum(jnp.flip(log_keep, -1), -1), -1) - log_keep
  # log sigmoid(z) = log sigmoid(-z) + z: one log-sigmoid a pair, not two (an absolute
  # error of ulp(z) in log A, a relative one in A; log_keep, summed, stays exact).
  log_a = log_keep + z_BxHxLxS + after + log_rest_BxHxL[..., None]
  return jnp.where(allowed, log_a, NEG), log_rest_BxHxL + log_keep.sum(-1)


def block(enc: Encoding, q, k, v, qpos, kpos, mask, carry, scale):
  """One key block: the new state and its weights ``A`` ``[B, H, L, S]`` float32."""
  log_rest, acc, enc_carry = carry
  z = jnp.einsum('blhk,bshk->bhls', q, k, preferred_element_type=_f32) * scale
  bias, enc_carry = enc.bias(q, k, qpos, kpos, mask, enc_carry)
  if bias is not None:
    z = z + bias
  log_a, next_rest = log_weights(z, mask, log_rest)
  a = jnp.where(mask[:, None], jnp.exp(log_a), 0.0)
  out = jnp.einsum('bhls,bshk->blhk', a, v.astype(_f32))
  extra = enc.values(a, qpos, kpos)
  if extra is not None:
    out = out + extra.astype(_f32)
  return (next_rest, acc + out, enc_carry), a


class Tiled:
  """Stick-breaking inside flash's online softmax (``kernels.flash``): a tile's
  logits become ``log A`` (``log_weights``, the carry ``log_rest`` per query), so the
  tile loop accumulates ``sum_j exp(log A_ij - m) v_j`` as for softmax, and the output
  is that sum times ``exp(m)``, not over the row's total. The backward pass then needs
  ``p = A`` and ``D = 0`` (no normalisation to differentiate): it gets log-sum-exp 0
  and a zero row product."""

  @staticmethod
  def init(q_BxLxHxK):
    B, L, H, _ = q_BxLxHxK.shape
    return jnp.zeros((B, H, L), _f32)

  @staticmethod
  def logits(z_BxHxLxS, mask_BxLxS, log_rest_BxHxL):
    return log_weights(z_BxHxLxS, mask_BxLxS, log_rest_BxHxL)

  @staticmethod
  def finish(m_BxHxL, l_BxHxL, acc_BxHxLxK):
    """``(out, lse)``: the unnormalised sum and the zero log-sum-exp of ``p = A``."""
    del l_BxHxL
    return acc_BxHxLxK * jnp.exp(m_BxHxL)[..., None], jnp.zeros_like(m_BxHxL)

  @staticmethod
  def row_dot(dout_BxLxHxK, out_BxLxHxK):
    return jnp.zeros(out_BxLxHxK.shape[:-1], _f32)


def finish(state, a):
  """The output ``[B, L, H, Kv]`` float32 (no normalisation) and the weights of one
  dense block (None for blockwise)."""
  return state[1], a


def reference(z_BxHxLxS, mask_BxLxS, v_BxSxHxK):
  """The definition with an explicit loop over keys (slot order), for tests:
  ``A_ij = sigmoid(z_ij) prod_{k > j allowed} (1 - sigmoid(z_ik))``."""
  beta = jax.nn.sigmoid(z_BxHxLxS) * mask_BxLxS[:, None]
  S = beta.shape[-1]
  left = jnp.ones(beta.shape[:-1])
  weights = [None] * S
  for j in reversed(range(S)):
    weights[j] = beta[..., j] * left
    left = left * (1 - beta[..., j])
  a = jnp.stack(weights, -1)
  return jnp.einsum('bhls,bshk->blhk', a, v_BxSxHxK), a
