"""Randomized positions: Ruoss et al. 2023, "Randomized Positional Encodings
Boost Length Generalization of Transformers".

A sequence of n tokens gets, instead of positions 0..n-1, a sorted sample of n
distinct positions from [0, max_random_position), so the encoding sees the
positions of longer sequences. As in the paper's code, the sample is drawn
whenever the model runs with a ``positions`` rng: in training and in
evaluation (posjax's eval step passes a fixed key per batch). Any encoding then
reads these positions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.encodings.base import Array


def randomized_positions(rng: Array, positions_BxL: Array, max_random_position: int,
                         segment_ids_BxL: Array | None = None) -> Array:
  """Each segment's positions replaced by its own sorted sample, int32 ``[B, L]``.

  A segment (a packed document, or the whole row) of n tokens gets a uniform
  draw of n distinct values from [0, max_random_position), sorted, assigned to
  its tokens in the order of their original positions. One random permutation
  per row is cut into disjoint slices, one per segment (token slot t takes
  ``perm[t]``), so every segment's draw is uniform and the segments of a row
  never share a position.
  """
  b, l = positions_BxL.shape
  if max_random_position < l:
    raise ValueError(f'randomized_positions: max_random_position={max_random_position} '
                     f'must be >= the sequence length {l}')
  seg = (jnp.zeros((b, l), jnp.int32) if segment_ids_BxL is None
         else segment_ids_BxL.astype(jnp.int32))
  draw = lambda key: jax.random.choice(key, max_random_position, (l,), replace=False)
  values = jax.vmap(draw)(jax.random.split(rng, b)).astype(jnp.int32)
  # Sort values and tokens within segments alike: both orders group the same
  # segments into the same slots, so slot j of one is slot j of the other.
  by_segment = lambda x: jnp.lexsort((x, seg), axis=1)
  values = jnp.take_along_axis(values, by_segment(values), axis=1)
  tokens = by_segment(positions_BxL.astype(jnp.int32))
  out = jnp.zeros((b, l), jnp.int32)
  return out.at[jnp.arange(b)[:, None], tokens].set(values)
