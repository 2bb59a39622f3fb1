"""The contract between attention and positional encodings.

An encoding acts at one or more named points, each a method with an identity /
no-op default, so attention calls every hook unconditionally and never branches
on encoding names:

  embed(x, positions)                         absolute: added to the input embedding
  tokens(x)                                   per-token values from the layer's input,
                                              ``[B, L, H, F]``: they ride as F extra key
                                              channels (zero query channels, so q . k is
                                              unchanged), cached and tiled with the keys,
                                              and ``bias`` reads them from k
  qk(q, k, q_pos, k_pos)                      rotary: transforms q and k (may append channels)
  bias(q, k, q_pos, k_pos, mask, carry)       additive float32 logit bias for one key block
  values(p, q_pos, k_pos)                     relative value vectors: sum_j p_ij a_{ij}

Shapes follow nanodo's naming: B batch, L query length, S key length, H heads,
K head dim, D model dim. Positions are explicit int32 arrays ``[B, L]``; every
piece of position math is float32 whatever the activation dtype. An encoding with
``position_rows = 3`` receives position rows ``[3, B, L]`` (temporal, height, width,
as Qwen2-VL) in its hooks instead: the data gives them for images, and text has
three equal rows (``equal_rows``).

Shared math, written once and called by every encoding that needs it:
``relative`` (key - query), ``check_base``, ``sinusoid_inv_freq`` and ``cos_sin`` (the
sinusoid of integer positions with exact float32 angles).

A bias hook that reads its per-head values through ``per_head``, its tables through
``lookup`` and its small MLPs through ``scalar_mlp`` runs unchanged inside the Pallas
kernels (``posjax.models.kernels.pallas``): there ``in_kernel(h)`` makes those helpers
give one head's bias, ``[B, 1, L, S]``, with no gather and no batched matmul.

Blockwise attention evaluates ``bias`` once per key block, visiting key blocks
from the last to the first; ``carry`` lets an encoding accumulate across blocks
(CoPE's gate sums). Dense attention is the same code with a single block.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings import kernel_loops

Array = Any

# Where an encoding acts, each the name of its hook method. ``registry.register``
# checks that the hooks a class overrides are exactly the ones it declares.
EMBED, TOKENS, QK, BIAS, VALUES = 'embed', 'tokens', 'qk', 'bias', 'values'
# Helpers of a hook, overridable only together with it.
HOOK_HELPERS = {'init_carry': BIAS}


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

  # Class-level declarations, read by the model, the config checks and the
  # parametrised tests (tests/test_models.py, tests/test_active_encodings.py).
  # The hooks this class overrides (EMBED, QK, BIAS, VALUES); checked at
  # registration.
  acts_at: ClassVar[tuple[str, ...]] = ()
  # One instance for the whole model (T5's table, absolute tables) rather than
  # one per attention layer. Required for EMBED: the model calls ``embed`` once,
  # on the input embedding.
  shared_across_layers: ClassVar[bool] = False
  # Positions must stay below ``max_len`` (a learned table): evaluation lengths
  # above it are a config error.
  bounded_by_max_len: ClassVar[bool] = False
  # Defined for decoders only (xPos).
  causal_only: ClassVar[bool] = False
  # Cached decoding reproduces the full pass (False for encoder-only schemes).
  supports_decoding: ClassVar[bool] = True
  # The model's output is unchanged when every position (every position row) is
  # shifted by the same amount.
  translation_invariant: ClassVar[bool] = False
  # The output depends on the positions at all (False: NoPE, and CoPE / FoX / PaTH, whose
  # signals come from the tokens): randomized positions change nothing for it, so
  # the suites skip that variant.
  reads_positions: ClassVar[bool] = True
  # ``qk`` returns q and k with this many times ``head_dim`` channels (PoPE: 2);
  # v keeps ``head_dim``. cuDNN's kernel needs them equal.
  qk_width: ClassVar[int] = 1
  # 1: hooks get positions ``[B, L]``; 3: they get rows ``[3, B, L]`` (temporal,
  # height, width) and act only at EMBED or QK (checked at registration).
  position_rows: ClassVar[int] = 1
  # Owns trained parameters; each must move in a short run
  # (tests/test_active_encodings.py).
  has_params: ClassVar[bool] = False
  # ``bias`` is a function of the positions alone (not of q, k or a carry), so
  # ``bias(None, None, qpos, kpos, mask, None)`` gives its curve by distance
  # (``posjax.analysis.measures.bias_by_distance``).
  bias_from_positions: ClassVar[bool] = False
  # That bias reaches its heads, tables and MLPs only through ``per_head``,
  # ``lookup`` and ``scalar_mlp``, so the Pallas kernels (``attention='pallas'``)
  # can compute one head's bias on a GPU (Triton) or TPU (Mosaic);
  # tests/test_lowering.py lowers them for both.
  bias_in_kernel: ClassVar[bool] = False

  def embed(self, x_BxLxD: Array, pos_BxL: Array) -> Array:
    del pos_BxL
    return x_BxLxD

  def tokens(self, x_BxLxD: Array) -> Array | None:
    """Per-token values ``[B, L, H, F]`` float32 from the attention layer's input (or
    None); the model appends them to the keys after ``qk`` (``k[..., K:]`` in ``bias``)."""
    del x_BxLxD
    return None

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


_KERNEL_HEAD = contextvars.ContextVar('kernel_head', default=None)
_KERNEL_GRAD = contextvars.ContextVar('kernel_grad', default=False)


@contextlib.contextmanager
def in_kernel(head: Array, *, grad: bool = False):
  """While tracing a bias for a kernel program of head ``head`` (an int32 scalar);
  ``grad``: for the kernel that differentiates it (``kernel_loops``)."""
  tokens = _KERNEL_HEAD.set(head), _KERNEL_GRAD.set(grad)
  try:
    yield
  finally:
    _KERNEL_HEAD.reset(tokens[0])
    _KERNEL_GRAD.reset(tokens[1])


def take_head(x: Array, index, axis: int = 0) -> Array:
  """Entry ``index`` (a traced scalar is fine) of ``x`` along ``axis``, kept as size
  1: a masked sum, as Mosaic slices no lanes dynamically and Triton no values."""
  mine = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis % x.ndim) == index
  return jnp.sum(jnp.where(mine, x, 0), axis=axis, keepdims=True)


def per_head(x: Array, axis: int = 0) -> Array:
  """``x`` along its heads ``axis``: every head, or inside a kernel the kernel's
  head alone (kept as size 1)."""
  head = _KERNEL_HEAD.get()
  return x if head is None else take_head(x, head, axis)


def lookup(table_NxH: Array, index_BxLxS: Array) -> Array:
  """``table[index]`` as ``[B, H, L, S]``; inside a kernel a loop over the N rows
  (``kernel_loops``: neither Triton nor Mosaic gathers from a table)."""
  if _KERNEL_HEAD.get() is None:
    return jnp.take(table_NxH, index_BxLxS, axis=0).transpose(0, 3, 1, 2)
  return kernel_loops.lookup(table_NxH, index_BxLxS, grad=_KERNEL_GRAD.get())[:, None]


def scalar_mlp(x_BxLxS: Array, w1_W: Array, b1_W: Array, w2_WxH: Array) -> Array:
  """``relu(x * w1 + b1) @ w2`` of each scalar of ``x``, as ``[B, H, L, S]``; inside
  a kernel a loop over the W hidden units (``kernel_loops``: no rank-4 matmul)."""
  if _KERNEL_HEAD.get() is None:
    return (jax.nn.relu(x_BxLxS[..., None] * w1_W + b1_W) @ w2_WxH).transpose(0, 3, 1, 2)
  return kernel_loops.scalar_mlp(x_BxLxS, w1_W, b1_W, w2_WxH, grad=_KERNEL_GRAD.get())[:, None]


def equal_rows(pos_BxL: Array) -> Array:
  """Text's position rows: ``[3, B, L]``, the three rows equal to ``pos``."""
  return jnp.broadcast_to(jnp.asarray(pos_BxL)[None], (3, *jnp.shape(pos_BxL)))


def relative(qpos_BxL: Array, kpos_BxS: Array) -> Array:
  """Relative position key - query, ``[B, L, S]`` int32 (T5's convention)."""
  return kpos_BxS[:, None, :].astype(jnp.int32) - qpos_BxL[:, :, None].astype(jnp.int32)


def check_base(base: float, field: str = 'model.posenc_args.base') -> None:
  """Every sinusoid / rotary ``base`` must exceed 1 (frequencies below 1)."""
  if not base > 1:
    raise ValueError(f'{field}: got {base!r}; allowed: a number > 1')


def sinusoid_inv_freq(dim: int, base: float) -> np.ndarray:
  """``base ** (-2f / dim)`` for f < dim / 2, float64 numpy (static); callers
  validate ``base`` with ``check_base``."""
  return base ** -(np.arange(0, dim, 2, dtype=np.float64) / dim)


def cos_sin(pos: Array, inv_freq_F: Array) -> tuple[Array, Array]:
  """cos and sin of ``pos * inv_freq``, ``[..., F]`` float32, for int positions.

  Plain float32 ``pos * inv_freq`` is off by up to half an ulp of the angle,
  0.03 rad at 10^6. Instead positions split into 4096 * hi + lo and each
  frequency into 12 high and 12 low mantissa bits, so ``hi * f_hi`` is exact
  (for |pos| < 2^24) and the rest is a float32 sum below ~5000; cos and sin of
  the sum follow from the addition theorem. Every sinusoid in posjax (absolute,
  Transformer-XL, rotary) is computed here.
  """
  pos = jnp.asarray(pos).astype(jnp.int32)
  lo_x1 = (pos & 4095).astype(jnp.float32)[..., None]
  hi_x1 = (pos - (pos & 4095)).astype(jnp.float32)[..., None]
  f_F = jnp.asarray(inv_freq_F, jnp.float32)
  f_hi_F = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(f_F, jnp.uint32) & jnp.uint32(0xFFFFF000), jnp.float32)
  f_lo_F = f_F - f_hi_F
  big_xF = hi_x1 * f_hi_F
  small_xF = hi_x1 * f_lo_F + lo_x1 * f_hi_F + lo_x1 * f_lo_F
  cos_big, sin_big = jnp.cos(big_xF), jnp.sin(big_xF)
  cos_small, sin_small = jnp.cos(small_xF), jnp.sin(small_xF)
  return (cos_big * cos_small - sin_big * sin_small,
          sin_big * cos_small + cos_big * sin_small)
