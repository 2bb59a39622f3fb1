"""Absolute encodings, added to the token embeddings once per model.

  none            NoPE: positions enter only through the causal mask.
  sinusoidal      Vaswani et al. 2017, "Attention Is All You Need", sec. 3.5.
  learned         a trained ``[max_len, D]`` table (Gehring et al. 2017; GPT),
                  initialised at half the token embedding's std (GPT-2).
  sinusoidal_2d   row / column sinusoids of the height / width position rows.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from posjax.encodings.base import (EMBED, Array, Encoding, check_base, cos_sin,
                                   sinusoid_inv_freq)
from posjax.encodings.registry import register

# The std of the token embedding (posjax/models/transformer.py, ``nn.Embed``
# with normal(1.0)). A learned table starts at half of it, GPT-2's ratio (wpe
# 0.01, wte 0.02), so position enters the first layer next to the token.
TOKEN_EMBEDDING_STD = 1.0
LEARNED_INIT_STD = 0.5 * TOKEN_EMBEDDING_STD


def sinusoidal_embedding(positions: Array, dim: int, *, base: float = 10000.0) -> Array:
  """``[..., dim]`` float32 of integer positions: PE[p, 2i] = sin(p / base^(2i/dim)),
  PE[p, 2i+1] = cos(...), with exact float32 angles (``base.cos_sin``)."""
  if dim <= 0 or dim % 2:
    raise ValueError(f'sinusoidal_embedding: dim must be a positive even integer, got {dim}')
  cos_xF, sin_xF = cos_sin(positions, sinusoid_inv_freq(dim, base))
  # Interleave: channel 2i is sin, channel 2i+1 is cos of the same frequency.
  return jnp.stack([sin_xF, cos_xF], -1).reshape(*sin_xF.shape[:-1], dim)


def _add(x_BxLxD: Array, pe_BxLxD: Array) -> Array:
  return (x_BxLxD.astype(jnp.float32) + pe_BxLxD).astype(x_BxLxD.dtype)


class _Absolute(Encoding):
  acts_at = (EMBED,)
  shared_across_layers = True


@register('none')
class NoPE(_Absolute):
  """No positional encoding (Kazemnejad et al. 2023): identity at every hook."""
  acts_at = ()
  translation_invariant = True
  reads_positions = False


@register('sinusoidal')
class Sinusoidal(_Absolute):
  base: float = 10000.0

  def __post_init__(self):
    super().__post_init__()
    check_base(self.base)
    if self.model_dim % 2:
      raise ValueError(f'model.model_dim: got {self.model_dim}; allowed: an even '
                       'integer for posenc=sinusoidal')

  def embed(self, x_BxLxD, pos_BxL):
    return _add(x_BxLxD, sinusoidal_embedding(pos_BxL, self.model_dim, base=self.base))


@register('learned')
class Learned(_Absolute):
  """A learned table ``[max_len, D]``, init normal(init_std).

  ``init_std`` defaults to half the token embedding's std, GPT-2's ratio: at
  std 0.02 the term was 2 % of the input and an LM trained exactly like NoPE;
  at the token's std (1.0) the random code cost a 200-step LM run 0.13 nats,
  at 0.5 it cost 0.05 (configs/lm.py:runlocal, eval loss at L = 128). Positions are clipped to ``max_len - 1``
  (an error is impossible for traced positions); the config forbids evaluating
  beyond ``max_len`` with this table.
  """
  init_std: float = LEARNED_INIT_STD
  bounded_by_max_len = True
  has_params = True

  def __post_init__(self):
    super().__post_init__()
    if not self.init_std > 0:
      raise ValueError(f'model.posenc_args.init_std: got {self.init_std!r}; '
                       'allowed: a number > 0')

  def setup(self):
    self.table_NxD = self.param(
        'table', nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                              ('length', 'embed')),
        (self.max_len, self.model_dim), jnp.float32)

  def embed(self, x_BxLxD, pos_BxL):
    pos_BxL = jnp.clip(pos_BxL, 0, self.max_len - 1)
    return _add(x_BxLxD, jnp.take(self.table_NxD, pos_BxL, axis=0))


@register('sinusoidal_2d')
class Sinusoidal2D(_Absolute):
  """Channels [0, D/2) are the 1D sinusoid of the height position row (a pixel's
  row), [D/2, D) of the width row (its column)."""
  base: float = 10000.0
  position_rows = 3

  def __post_init__(self):
    super().__post_init__()
    check_base(self.base)
    if self.model_dim % 4:
      raise ValueError(f'model.model_dim: got {self.model_dim}; allowed: a multiple '
                       'of 4 for posenc=sinusoidal_2d')

  def embed(self, x_BxLxD, rows_3xBxL):
    half = self.model_dim // 2
    pe_BxLxD = jnp.concatenate([sinusoidal_embedding(rows_3xBxL[1], half, base=self.base),
                                sinusoidal_embedding(rows_3xBxL[2], half, base=self.base)], -1)
    return _add(x_BxLxD, pe_BxLxD)
