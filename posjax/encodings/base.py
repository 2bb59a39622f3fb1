"""The contract between attention and positional encodings.

An encoding acts at one or more named points, each a method with an identity /
no-op default, so attention calls every hook unconditionally and never branches
on encoding names:

  embed(x, positions)                         absolute: added to the input embedding
  qk(q, k, q_pos, k_pos)                      rotary: transforms q and k (may append channels)
  bias(q, k, q_pos, k_pos, mask, carry)       additive float32 logit bias for one key block
  values(p, q_pos, k_pos)                     relative value vectors: sum_j p_ij a_{ij}

Shapes follow nanodo's naming: B batch, L query length, S key length, H heads,
K head dim, D model dim. Positions are explicit int32 arrays ``[B, L]``; every
piece of position math is float32 whatever the activation dtype.

Blockwise attention evaluates ``bias`` once per key block, visiting key blocks
from the last to the first; ``carry`` lets an encoding accumulate across blocks
(CoPE's gate sums). Dense attention is the same code with a single block.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

Array = Any

# Where an encoding acts; used by the README table, the registry and tests.
EMBED, QK, BIAS, VALUES = 'embed', 'qk', 'bias', 'values'


class Encoding(nn.Module):
  """Base class. Subclasses are dataclass-style linen modules.

  Attributes shared by every encoding (filled in by ``registry.make``):
    num_heads, head_dim, model_dim: attention geometry.
    max_len: the longest training length (learned tables, FIRE's L init, ...).
    causal: decoder (True) or encoder (False) attention.
  Hyperparameters are further dataclass fields of each subclass, named as in
  the public functions (``num_buckets``, ``base``, ``scaling``, ...).
  """
  num_heads: int = 1
  head_dim: int = 64
  model_dim: int = 64
  max_len: int = 512
  causal: bool = True

  # Class-level declarations.
  acts_at: ClassVar[tuple[str, ...]] = ()
  # One instance for the whole model (T5's table, absolute tables) rather than
  # one per attention layer. Only shared encodings are asked for ``embed``.
  shared_across_layers: ClassVar[bool] = False
  # Positions must stay below ``max_len`` (a learned table): evaluation lengths
  # above it are a config error.
  bounded_by_max_len: ClassVar[bool] = False
  # Defined for decoders only (xPos).
  causal_only: ClassVar[bool] = False
  # Cached decoding reproduces the full pass (False for encoder-only schemes).
  supports_decoding: ClassVar[bool] = True

  def embed(self, x_BxLxD: Array, pos_BxL: Array) -> Array:
    del pos_BxL
    return x_BxLxD

  def qk(self, q_BxLxHxK: Array, k_BxSxHxK: Array, qpos_BxL: Array,
         kpos_BxS: Array) -> tuple[Array, Array]:
    del qpos_BxL, kpos_BxS
    return q_BxLxHxK, k_BxSxHxK

  def init_carry(self, q_BxLxHxK: Array) -> Any:
    del q_BxLxHxK
    return None

  def bias(self, q_BxLxHxK: Array, k_BxSxHxK: Array, qpos_BxL: Array,
           kpos_BxS: Array, mask_BxLxS: Array, carry: Any
           ) -> tuple[Array | None, Any]:
    """Additive logits ``[B, H, L, S]`` float32 (or None) and the new carry.

    q and k are the (post-``qk``) projections before the 1/sqrt(K) scale;
    ``mask`` is True where query i may attend to key j (causal and segments).
    """
    del q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS, mask_BxLxS
    return None, carry

  def values(self, p_BxHxLxS: Array, qpos_BxL: Array, kpos_BxS: Array
             ) -> Array | None:
    """Extra output ``[B, L, H, K]`` linear in the (unnormalised) probabilities."""
    del p_BxHxLxS, qpos_BxL, kpos_BxS
    return None


def relative(qpos_BxL: Array, kpos_BxS: Array) -> Array:
  """Relative position key - query, ``[B, L, S]`` int32 (T5's convention)."""
  return kpos_BxS[:, None, :].astype(jnp.int32) - qpos_BxL[:, :, None].astype(jnp.int32)
