"""Multimodal RoPE (M-RoPE): three position rows share one head's rotary pairs.

Qwen2-VL (Wang et al. 2024): positions ``[3, B, L]`` (temporal, height, width);
``mrope_section = (s_t, s_h, s_w)`` gives frequency pairs ``[0, s_t)`` to the
temporal row, the next ``s_h`` to height and the next ``s_w`` to width (Hugging
Face doubles the section over the 'half' layout's two halves: the same pairs).
Qwen3-VL interleaves them (``interleaved=True``): pair k takes height when
``k % 3 == 1 and k < 3 * s_h``, width when ``k % 3 == 2 and k < 3 * s_w``, and
temporal otherwise. With three equal rows it is ``apply_rope`` (text tokens).
Angles come from ``base.cos_sin`` of each row (exact float32 angles).

Registered as ``mrope``: a ``rope`` (same base, layout, rotary fraction and
scalings) whose qk hook reads the model's position rows ``[3, B, L]``.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from posjax.encodings.base import Array, cos_sin
from posjax.encodings.registry import register
from posjax.encodings.rope_scaling import rope_inv_freq
from posjax.encodings.rotary import LAYOUTS, RoPE, _rotate


def mrope_rows(num_pairs: int, mrope_section, interleaved: bool) -> np.ndarray:
  """Which position row (0 temporal, 1 height, 2 width) each pair reads, ``[R]``."""
  s_t, s_h, s_w = (int(s) for s in mrope_section)
  if min(s_t, s_h, s_w) < 0 or s_t + s_h + s_w != num_pairs:
    raise ValueError(f'mrope_section: got {tuple(mrope_section)}; allowed: three numbers >= 0 '
                     f'summing to the {num_pairs} rotary pairs')
  k = np.arange(num_pairs)
  if not interleaved:
    return np.repeat([0, 1, 2], [s_t, s_h, s_w])
  return np.where((k % 3 == 1) & (k < 3 * s_h), 1, np.where((k % 3 == 2) & (k < 3 * s_w), 2, 0))


@functools.partial(jax.jit, static_argnames=('mrope_section', 'interleaved', 'layout'))
def apply_mrope(x: Array, positions: Array, inv_freq: Array, *, mrope_section: tuple,
                interleaved: bool = False, layout: str = 'half',
                attention_factor: float = 1.0) -> Array:
  """Rotates the first ``2 * len(inv_freq)`` channels of x ``[B, L, H, K]``, pair k
  by ``positions[row_k] * inv_freq[k]`` (``positions`` ``[3, B, L]``)."""
  if layout not in LAYOUTS:
    raise ValueError(f'layout: got {layout!r}; allowed: {", ".join(LAYOUTS)}')
  if positions.shape[0] != 3:
    raise ValueError(f'positions: got shape {positions.shape}; allowed: [3, B, L] '
                     '(temporal, height, width)')
  rows = mrope_rows(len(inv_freq), mrope_section, interleaved)
  cos_3xBxLxR, sin_3xBxLxR = cos_sin(positions, inv_freq)
  pick = lambda a: jnp.take_along_axis(a, jnp.asarray(rows)[None, None, None], 0)[0]  # noqa: E731
  return _rotate(x, attention_factor * pick(cos_3xBxLxR), attention_factor * pick(sin_3xBxLxR),
                 layout)


def default_section(num_pairs: int) -> tuple[int, int, int]:
  """Qwen2-VL's proportions (16, 24, 24) of 64 pairs: a quarter to temporal, the
  rest split evenly between height and width (height takes an odd pair)."""
  s_t = num_pairs // 4
  s_w = (num_pairs - s_t) // 2
  return s_t, num_pairs - s_t - s_w, s_w


@register('mrope')
class MRoPE(RoPE):
  """M-RoPE (Qwen2-VL, Wang et al. 2024; ``interleaved``: Qwen3-VL) on the model's
  position rows. ``mrope_section`` (pairs to temporal, height, width) defaults to
  ``default_section`` of the rotary pairs. Equal rows (text) give ``rope``."""
  mrope_section: Any = None
  interleaved: bool = False

  position_rows = 3

  def __post_init__(self):
    super().__post_init__()
    try:
      mrope_rows(self.rotary_dim // 2, self.section, self.interleaved)
    except (TypeError, ValueError) as e:
      raise ValueError(f'model.posenc_args.{e}') from None

  @property
  def section(self) -> tuple:
    if self.mrope_section is None:
      return default_section(self.rotary_dim // 2)
    return tuple(self.mrope_section)

  def qk(self, q_BxLxHxK, k_BxSxHxK, qrows_3xBxL, krows_3xBxS):
    inv_freq_R, factor = rope_inv_freq(
        self.rotary_dim, base=self.base, scaling=self._scaling(k_BxSxHxK.shape[1]))
    rope = functools.partial(apply_mrope, inv_freq=inv_freq_R, mrope_section=self.section,
                             interleaved=self.interleaved, layout=self.layout,
                             attention_factor=factor)
    return rope(q_BxLxHxK, qrows_3xBxL), rope(k_BxSxHxK, krows_3xBxS)
