"""Absolute encodings, added to the token embeddings once per model.

  none            NoPE: positions enter only through the causal mask.
  sinusoidal      Vaswani et al. 2017, "Attention Is All You Need", sec. 3.5.
  learned         a trained ``[max_len, D]`` table (Gehring et al. 2017; GPT).
  sinusoidal_2d   row / column sinusoids of a ``grid_width``-wide raster scan.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from posjax.encodings.base import EMBED, Array, Encoding
from posjax.encodings.registry import register


def sinusoidal_embedding(positions: Array, dim: int, *, base: float = 10000.0) -> Array:
  """``[..., dim]`` float32: PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(...)."""
  if dim <= 0 or dim % 2:
    raise ValueError(f'sinusoidal_embedding: dim must be a positive even integer, got {dim}')
  inv_freq_F = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angle_xF = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq_F
  # Interleave: channel 2i is sin, channel 2i+1 is cos of the same frequency.
  return jnp.stack([jnp.sin(angle_xF), jnp.cos(angle_xF)], -1).reshape(
      *angle_xF.shape[:-1], dim)


def _add(x_BxLxD: Array, pe_BxLxD: Array) -> Array:
  return (x_BxLxD.astype(jnp.float32) + pe_BxLxD).astype(x_BxLxD.dtype)


class _Absolute(Encoding):
  acts_at = (EMBED,)
  shared_across_layers = True


@register('none')
class NoPE(_Absolute):
  """No positional encoding (Kazemnejad et al. 2023): identity at every hook."""
  acts_at = ()


@register('sinusoidal')
class Sinusoidal(_Absolute):
  base: float = 10000.0

  def __post_init__(self):
    super().__post_init__()
    if not self.base > 1:
      raise ValueError(f'model.posenc_args.base: got {self.base!r}; allowed: a number > 1')
    if self.model_dim % 2:
      raise ValueError(f'model.model_dim: got {self.model_dim}; allowed: an even '
                       'integer for posenc=sinusoidal')

  def embed(self, x_BxLxD, pos_BxL):
    return _add(x_BxLxD, sinusoidal_embedding(pos_BxL, self.model_dim, base=self.base))


@register('learned')
class Learned(_Absolute):
  """A learned table ``[max_len, D]``, init normal(0.02).

  Positions are clipped to ``max_len - 1`` (an error is impossible for traced
  positions); the config forbids evaluating beyond ``max_len`` with this table.
  """
  bounded_by_max_len = True

  def setup(self):
    self.table_NxD = self.param(
        'table', nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                              ('length', 'embed')),
        (self.max_len, self.model_dim), jnp.float32)

  def embed(self, x_BxLxD, pos_BxL):
    pos_BxL = jnp.clip(pos_BxL, 0, self.max_len - 1)
    return _add(x_BxLxD, jnp.take(self.table_NxD, pos_BxL, axis=0))


@register('sinusoidal_2d')
class Sinusoidal2D(_Absolute):
  """Position p is pixel (p // grid_width, p % grid_width) of a raster scan:
  channels [0, D/2) are the 1D sinusoid of the row, [D/2, D) of the column."""
  grid_width: int = 32
  base: float = 10000.0

  def __post_init__(self):
    super().__post_init__()
    if not (isinstance(self.grid_width, int) and self.grid_width > 0):
      raise ValueError(f'model.posenc_args.grid_width: got {self.grid_width!r}; '
                       'allowed: a positive integer')
    if not self.base > 1:
      raise ValueError(f'model.posenc_args.base: got {self.base!r}; allowed: a number > 1')
    if self.model_dim % 4:
      raise ValueError(f'model.model_dim: got {self.model_dim}; allowed: a multiple '
                       'of 4 for posenc=sinusoidal_2d')

  def embed(self, x_BxLxD, pos_BxL):
    half = self.model_dim // 2
    pe_BxLxD = jnp.concatenate([
        sinusoidal_embedding(pos_BxL // self.grid_width, half, base=self.base),
        sinusoidal_embedding(pos_BxL % self.grid_width, half, base=self.base)], -1)
    return _add(x_BxLxD, pe_BxLxD)
