"""Randomized positions: Ruoss et al. 2023, "Randomized Positional Encodings
Boost Length Generalization of Transformers".

At training time each sequence's positions 0..n-1 are replaced by a sorted
sample of distinct positions from [0, max_random_position), so the encoding
sees the positions of longer sequences. Any encoding then reads these.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from posjax.encodings.base import Array


def randomized_positions(rng: Array, positions_BxL: Array, max_random_position: int) -> Array:
  """``sample[b, positions[b, l]]``, int32 ``[B, L]``.

  ``sample[b]`` is a sorted draw without replacement of L values from
  [0, max_random_position), one per batch row. Gathering by the original
  position keeps packed documents (positions restarting at 0) each sorted and
  distinct; every document of a row maps onto the same prefix of the sample.
  """
  b, l = positions_BxL.shape
  if max_random_position < l:
    raise ValueError(f'randomized_positions: max_random_position={max_random_position} '
                     f'must be >= the sequence length {l}')
  draw = lambda key: jnp.sort(jax.random.choice(key, max_random_position, (l,), replace=False))
  sample_BxL = jax.vmap(draw)(jax.random.split(rng, b)).astype(jnp.int32)
  return jnp.take_along_axis(sample_BxL, jnp.clip(positions_BxL, 0, l - 1).astype(jnp.int32),
                             axis=1)
