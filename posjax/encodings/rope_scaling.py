"""RoPE's frequencies and their context-extension scalings (``rope_inv_freq``).

Static hyperparameters -> inverse frequencies (numpy float64, returned as float32)
and the attention factor. Scalings follow Hugging Face ``modeling_rope_utils``:
linear (Chen et al. 2023, position interpolation), ntk and dynamic (bloc97 2023),
yarn (Peng et al. 2023; ``mscale`` / ``mscale_all_dim`` / ``truncate`` as HF's
``_compute_yarn_parameters``), llama3 (Meta 2024), longrope (Ding et al. 2024) and
proportional (p-RoPE, Barbero et al. 2025: the highest ``floor(fraction * dim / 2)``
frequencies of the ordinary spectrum kept, the rest set to 0, no rotation).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from posjax.encodings.base import check_base, sinusoid_inv_freq

SCALING_TYPES = ('linear', 'ntk', 'dynamic', 'yarn', 'llama3', 'longrope', 'proportional')
# Those that extend a trained context by a ``factor`` (the rope_scaling suite's).
EXTENSION_TYPES = SCALING_TYPES[:-1]
_REQUIRED = {
    'linear': ('factor',), 'ntk': ('factor',),
    'dynamic': ('factor', 'original_max_position', 'seq_len'),
    'yarn': ('factor', 'original_max_position'), 'llama3': ('factor',),
    'longrope': ('short_factor', 'long_factor', 'original_max_position',
                 'seq_len'),
    'proportional': ('fraction',),
}
_OPTIONAL = {
    'linear': (), 'ntk': (), 'dynamic': (),
    'yarn': ('beta_fast', 'beta_slow', 'attention_factor', 'mscale', 'mscale_all_dim',
             'truncate'),
    'llama3': ('low_freq_factor', 'high_freq_factor', 'original_max_position'),
    'longrope': ('factor', 'max_position', 'attention_factor'),
    'proportional': (),
}


def _check_scaling(scaling: Mapping[str, Any], dim: int) -> dict[str, Any]:
  s = dict(scaling)
  kind = s.pop('type', None)
  if kind not in SCALING_TYPES:
    raise ValueError(f'scaling.type: got {kind!r}; allowed: {", ".join(SCALING_TYPES)}')
  allowed = _REQUIRED[kind] + _OPTIONAL[kind]
  if unknown := sorted(set(s) - set(allowed)):
    raise ValueError(f'scaling.{unknown[0]}: unknown key for type {kind!r}; '
                     f'allowed: {", ".join(allowed)}')
  if missing := [key for key in _REQUIRED[kind] if s.get(key) is None]:
    raise ValueError(f'scaling.{missing[0]}: required for type {kind!r}; allowed: '
                     f'a dict with {", ".join(_REQUIRED[kind])}')
  if kind == 'longrope' and s.get('factor') is None:
    if s.get('max_position') is None:
      raise ValueError('scaling.max_position: required for type longrope when '
                       'scaling.factor is not given; allowed: a number > 0')
    s['factor'] = s['max_position'] / s['original_max_position']
  for key in ('factor', 'original_max_position', 'seq_len', 'beta_fast',
              'beta_slow', 'attention_factor', 'low_freq_factor',
              'high_freq_factor', 'max_position'):
    if key in s and s[key] is not None and not s[key] > 0:
      raise ValueError(f'scaling.{key}: got {s[key]!r}; allowed: a number > 0')
  if kind == 'proportional' and not 0 <= s['fraction'] <= 1:
    raise ValueError(f'scaling.fraction: got {s["fraction"]!r}; allowed: a number in [0, 1]')
  for key in ('mscale', 'mscale_all_dim'):
    if key in s and s[key] is not None and not s[key] >= 0:
      raise ValueError(f'scaling.{key}: got {s[key]!r}; allowed: a number >= 0')
  low, high = s.get('low_freq_factor', 1.0), s.get('high_freq_factor', 4.0)
  if kind == 'llama3' and not low < high:
    raise ValueError(f'scaling.high_freq_factor: got {high!r}; allowed: a number > '
                     f'scaling.low_freq_factor={low!r}')
  for key in ('short_factor', 'long_factor'):
    if key in s and (len(s[key]) != dim // 2 or min(s[key]) <= 0):
      raise ValueError(f'scaling.{key}: got {len(s[key])} numbers; allowed: '
                       f'{dim // 2} (= rotary dim / 2) positive numbers')
  return dict(s, type=kind)


def rope_inv_freq(dim: int, *, base: float = 10000.0,
                  scaling: Mapping[str, Any] | None = None
                  ) -> tuple[np.ndarray, float]:
  """Inverse frequencies ``[dim // 2]`` float32 and the attention factor.

  ``scaling`` is None or a dict with ``type`` in ``SCALING_TYPES`` (keys in
  ``_REQUIRED`` / ``_OPTIONAL``). The attention factor multiplies cos and sin
  (YaRN's mscale, LongRoPE's scaling); it is 1.0 for the other types.
  Computed in float64 from static hyperparameters, so ``seq_len`` (dynamic,
  longrope) must be a Python number.
  """
  if dim <= 0 or dim % 2:
    raise ValueError(f'rotary dim must be a positive even number, got {dim}')
  check_base(base, 'base')
  exponent = np.arange(0, dim, 2, dtype=np.float64) / dim
  inv_freq = sinusoid_inv_freq(dim, base)
  if scaling is None:
    return inv_freq.astype(np.float32), 1.0
  s = _check_scaling(scaling, dim)
  kind, factor, attention_factor = s['type'], s.get('factor'), 1.0
  if kind == 'linear':
    inv_freq = inv_freq / factor
  elif kind == 'ntk':
    inv_freq = (base * factor ** (dim / (dim - 2))) ** -exponent
  elif kind == 'dynamic':
    ratio = s['seq_len'] / s['original_max_position']
    if ratio > 1:
      inv_freq = (base * (factor * ratio - (factor - 1)) ** (dim / (dim - 2))) ** -exponent
  elif kind == 'yarn':
    inv_freq, attention_factor = _yarn(inv_freq, dim, base, s)
  elif kind == 'llama3':
    orig = s.get('original_max_position', 8192)
    low_ff, high_ff = s.get('low_freq_factor', 1.0), s.get('high_freq_factor', 4.0)
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((orig / wavelen - low_ff) / (high_ff - low_ff), 0, 1)
    # smooth = 1 for wavelen <= orig / high_ff (kept), 0 for >= orig / low_ff
    # (interpolated by factor), linear in orig / wavelen in between.
    inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
  elif kind == 'proportional':
    inv_freq = np.where(np.arange(dim // 2) < math.floor(s['fraction'] * dim / 2), inv_freq, 0.)
  else:  # longrope
    use_long = s['seq_len'] > s['original_max_position']
    ext = np.asarray(s['long_factor' if use_long else 'short_factor'], np.float64)
    inv_freq = inv_freq / ext
    attention_factor = s.get('attention_factor') or (
        math.sqrt(1 + math.log(factor) / math.log(s['original_max_position']))
        if factor > 1 else 1.0)
  return inv_freq.astype(np.float32), float(attention_factor)


def _mscale(scale: float, mscale: float = 1.0) -> float:
  """YaRN's ``get_mscale``: ``0.1 * mscale * ln(scale) + 1`` for scale > 1, else 1."""
  return 0.1 * mscale * math.log(scale) + 1.0 if scale > 1 else 1.0


def _yarn(inv_freq, dim: int, base: float, s: Mapping[str, Any]):
  """YaRN as Hugging Face's ``_compute_yarn_parameters``: the correction range
  floored / ceiled unless ``truncate`` is False (gpt-oss); the attention factor
  given, else ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` when both
  are given (DeepSeek), else ``mscale(factor)``."""
  factor, orig = s['factor'], s['original_max_position']

  def correction_dim(rotations):
    return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))
  low, high = correction_dim(s.get('beta_fast', 32.0)), correction_dim(s.get('beta_slow', 1.0))
  if s.get('truncate', True):
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  ramp = np.clip((np.arange(dim // 2) - low) / (high - low + 0.001 * (low == high)), 0, 1)
  mscale, mscale_all_dim = s.get('mscale'), s.get('mscale_all_dim')
  attention_factor = s.get('attention_factor') or (
      _mscale(factor, mscale) / _mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
      else _mscale(factor))
  return inv_freq / factor * ramp + inv_freq * (1 - ramp), attention_factor
