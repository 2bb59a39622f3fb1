"""Rotary encodings: RoPE with its context-extension scalings, xPos, 2D RoPE.

``rope_inv_freq`` turns static hyperparameters into frequencies (numpy float64,
returned as float32); ``apply_rope`` rotates ``[B, L, H, K]`` activations at
explicit integer positions. All angle math is float32 whatever ``x.dtype``, and
the angle ``pos * inv_freq`` is split into an exactly representable part plus a
small remainder (``base.cos_sin``), so a bf16 model at position 10^6 gets the same
rotation as a float64 reference to within bf16 rounding.

References: Su et al. 2021 (RoFormer); Chen et al. 2023 (position
interpolation); bloc97 2023 (NTK-aware, dynamic NTK); Peng et al. 2023 (YaRN);
Meta 2024 (Llama 3.1 scaling); Ding et al. 2024 (LongRoPE); Sun et al. 2022
(xPos). Scalings follow HuggingFace ``modeling_rope_utils``.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings.base import QK, Array, Encoding, check_base, cos_sin
from posjax.encodings.registry import register
from posjax.encodings.rope_scaling import rope_inv_freq

LAYOUTS = ('half', 'interleaved')


def _rotate(x_BxLxHxK: Array, cos_BxLxR: Array, sin_BxLxR: Array,
            layout: str) -> Array:
  """Rotates the first 2R channels pairwise (float32); the rest pass through."""
  r = cos_BxLxR.shape[-1]
  x_BxLxHxK32 = x_BxLxHxK.astype(jnp.float32)
  rot_BxLxHx2R, rest_BxLxHxP = x_BxLxHxK32[..., :2 * r], x_BxLxHxK32[..., 2 * r:]
  if layout == 'half':  # GPT-NeoX / LLaMA: pairs (i, i + R)
    x1, x2 = rot_BxLxHx2R[..., :r], rot_BxLxHx2R[..., r:]
  else:  # RoFormer: pairs (2i, 2i + 1)
    x1, x2 = rot_BxLxHx2R[..., 0::2], rot_BxLxHx2R[..., 1::2]
  cos_BxLx1xR, sin_BxLx1xR = cos_BxLxR[:, :, None], sin_BxLxR[:, :, None]
  y1 = x1 * cos_BxLx1xR - x2 * sin_BxLx1xR
  y2 = x2 * cos_BxLx1xR + x1 * sin_BxLx1xR
  if layout == 'half':
    y_BxLxHx2R = jnp.concatenate([y1, y2], axis=-1)
  else:
    y_BxLxHx2R = jnp.stack([y1, y2], axis=-1).reshape(rot_BxLxHx2R.shape)
  return jnp.concatenate([y_BxLxHx2R, rest_BxLxHxP], axis=-1).astype(x_BxLxHxK.dtype)


@functools.partial(jax.jit, static_argnames='layout')
def apply_rope(x: Array, positions: Array, inv_freq: Array, *,
               layout: str = 'half', attention_factor: float = 1.0) -> Array:
  """Rotates the first ``2 * len(inv_freq)`` channels of x ``[B, L, H, D]`` by
  ``positions [B, L] * inv_freq``.

  ``layout`` 'half' pairs channel i with i + R (GPT-NeoX, LLaMA), 'interleaved'
  pairs 2i with 2i + 1 (RoFormer). cos and sin are multiplied by
  ``attention_factor``. Returns ``x.dtype``.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout: got {layout!r}; allowed: {", ".join(LAYOUTS)}')
  if 2 * len(inv_freq) > x.shape[-1]:
    raise ValueError(f'rotary dim {2 * len(inv_freq)} exceeds head dim {x.shape[-1]}')
  cos_BxLxR, sin_BxLxR = cos_sin(positions, inv_freq)
  return _rotate(x, attention_factor * cos_BxLxR, attention_factor * sin_BxLxR, layout)


@functools.partial(jax.jit, static_argnames=('layout', 'downscale'))
def apply_xpos(x_BxLxHxK: Array, pos_BxL: Array, inv_freq_R: Array, *,
               scale_base: float = 512.0, center: int = 0, downscale: bool = False,
               layout: str = 'half') -> Array:
  """RoPE with pair i scaled by ``zeta_i ** (+-(pos - center) / scale_base)``.

  ``zeta_i = (2i + 0.4 D) / (1.4 D)`` with D = 2R the rotary dim (torchscale);
  queries use +, keys (``downscale``) use -. Exponents are float32.
  """
  dim = 2 * len(inv_freq_R)
  zeta_R = (np.arange(0, dim, 2) + 0.4 * dim) / (1.4 * dim)
  rel_BxLx1 = (pos_BxL.astype(jnp.int32) - center).astype(jnp.float32)[..., None]
  scale_BxLxR = jnp.exp((-1.0 if downscale else 1.0) * rel_BxLx1 / scale_base
                        * jnp.log(zeta_R.astype(np.float32)))
  cos_BxLxR, sin_BxLxR = cos_sin(pos_BxL, inv_freq_R)
  return _rotate(x_BxLxHxK, scale_BxLxR * cos_BxLxR, scale_BxLxR * sin_BxLxR, layout)


def _check_layout(layout: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f'model.posenc_args.layout: got {layout!r}; allowed: '
                     f'{", ".join(LAYOUTS)}')


def _check_head_dim(enc: Encoding, multiple: int) -> None:
  """Rotary encodings pair channels: the head dim must be a multiple of 2 (4 in 2D)."""
  if enc.head_dim % multiple:
    raise ValueError(
        f'model.model_dim: got {enc.model_dim} with num_heads={enc.num_heads}, a head_dim '
        f'of {enc.head_dim}; allowed: model_dim / num_heads a multiple of {multiple} '
        f'for posenc={enc.registry_name}')


@register('rope')
class RoPE(Encoding):
  """Rotary position embedding with optional context-extension ``scaling``.

  ``rotary_fraction`` of each head's channels rotate (rounded down to even);
  the rest pass through. ``scaling`` is a dict for ``rope_inv_freq``. Under
  jit there is no runtime sequence length, so for 'dynamic' and 'longrope' the
  ``seq_len`` is the dict's if given, else the key length S (static): in
  cached decoding that is the cache size, so the full pass matches decoding
  only when both see the same S. The attention factor scales q and k, so
  logits scale by its square, as YaRN's mscale on cos/sin does.
  """
  base: float = 10000.0
  layout: str = 'half'
  rotary_fraction: float = 1.0
  scaling: Any = None

  acts_at = (QK,)
  translation_invariant = True

  def __post_init__(self):
    check_base(self.base)
    _check_layout(self.layout)
    _check_head_dim(self, 2)
    if not 0 < self.rotary_fraction <= 1 or self.rotary_dim == 0:
      raise ValueError(f'model.posenc_args.rotary_fraction: got {self.rotary_fraction!r}; '
                       'allowed: a number in (0, 1] (the rotary dim is at most the '
                       f'head_dim {self.head_dim}) leaving a rotary dim of at least 2')
    if self.scaling is not None:
      try:
        rope_inv_freq(self.rotary_dim, base=self.base,
                      scaling=self._scaling(self.max_len))
      except ValueError as e:
        raise ValueError(f'model.posenc_args.{e}') from None
    super().__post_init__()

  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.rotary_fraction) // 2 * 2

  def _scaling(self, seq_len: int) -> dict[str, Any] | None:
    if self.scaling is None:
      return None
    scaling = dict(self.scaling)
    if scaling.get('type') in ('dynamic', 'longrope'):
      scaling.setdefault('seq_len', seq_len)
    return scaling

  def qk(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS):
    inv_freq_R, factor = rope_inv_freq(
        self.rotary_dim, base=self.base, scaling=self._scaling(k_BxSxHxK.shape[1]))
    rope = functools.partial(apply_rope, inv_freq=inv_freq_R,
                             layout=self.layout, attention_factor=factor)
    return rope(q_BxLxHxK, qpos_BxL), rope(k_BxSxHxK, kpos_BxS)


@register('xpos')
class XPos(Encoding):
  """xPos (Sun et al. 2022): RoPE whose pair i also decays with distance.

  ``apply_xpos`` scales q at m by ``zeta_i ** ((m - center) / scale_base)`` and
  k at n by ``zeta_i ** (-(n - center) / scale_base)``, so the score carries
  ``zeta_i ** ((m - n) / scale_base)`` <= 1 for m >= n. Default layout is
  'half' (torchscale's is 'interleaved', a channel permutation of it). The two
  scales are separate float32 numbers: zeta_0 ~ 0.29, so they under/overflow
  once |pos - center| nears 70 * scale_base (~36k positions by default); set
  ``center`` near the middle of the positions used (torchscale centres on the
  sequence). Causal only: for m < n the factor grows without bound.
  """
  causal_only = True
  base: float = 10000.0
  layout: str = 'half'
  scale_base: float = 512.0
  center: int = 0

  acts_at = (QK,)
  translation_invariant = True

  def __post_init__(self):
    check_base(self.base)
    _check_layout(self.layout)
    if not self.scale_base > 0:
      raise ValueError(f'model.posenc_args.scale_base: got {self.scale_base!r}; '
                       'allowed: a number > 0')
    _check_head_dim(self, 2)
    if not self.causal:
      raise ValueError('model.kind: an encoder (bidirectional) with posenc=xpos; allowed: '
                       'causal attention (decoder): the scale grows without bound for '
                       'keys after the query')
    super().__post_init__()

  def qk(self, q_BxLxHxK, k_BxSxHxK, qpos_BxL, kpos_BxS):
    inv_freq_R, _ = rope_inv_freq(self.head_dim, base=self.base)
    xpos = functools.partial(apply_xpos, inv_freq_R=inv_freq_R, scale_base=self.scale_base,
                             center=self.center, layout=self.layout)
    return xpos(q_BxLxHxK, qpos_BxL), xpos(k_BxSxHxK, kpos_BxS, downscale=True)


@register('rope_2d')
class RoPE2D(Encoding):
  """Axial 2D RoPE of (row, column) positions (e.g. LRA Image, 32 x 32 pixels).

  Reads the height and width position rows (the data's pixel coordinates); the
  first half of each head rotates with the row, the second with the column, each
  a 1D RoPE of dim K / 2, so scores depend only on the (row, column) offset. Text's
  three equal rows rotate both halves by the 1D position.
  """
  base: float = 10000.0
  layout: str = 'half'

  acts_at = (QK,)
  position_rows = 3
  translation_invariant = True

  def __post_init__(self):
    check_base(self.base)
    _check_layout(self.layout)
    _check_head_dim(self, 4)
    super().__post_init__()

  def _rotate(self, x_BxLxHxK, rows_3xBxL):
    inv_freq_R, _ = rope_inv_freq(self.head_dim // 2, base=self.base)
    rope = functools.partial(apply_rope, inv_freq=inv_freq_R, layout=self.layout)
    half = self.head_dim // 2
    return jnp.concatenate([rope(x_BxLxHxK[..., :half], rows_3xBxL[1]),
                            rope(x_BxLxHxK[..., half:], rows_3xBxL[2])], axis=-1)

  def qk(self, q_BxLxHxK, k_BxSxHxK, qrows_3xBxL, krows_3xBxS):
    return self._rotate(q_BxLxHxK, qrows_3xBxL), self._rotate(k_BxSxHxK, krows_3xBxS)
