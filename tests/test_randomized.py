"""Randomized positions (Ruoss et al. 2023): sorted, distinct, below the maximum."""
import jax
import numpy as np
import pytest

from posjax.encodings.randomized import randomized_positions

RNG = jax.random.PRNGKey(0)


def test_sorted_unique_below_max_and_per_row():
  pos = np.tile(np.arange(64, dtype=np.int32), (4, 1))
  out = np.asarray(randomized_positions(RNG, pos, 100))
  assert out.dtype == np.int32 and out.shape == (4, 64)
  assert (np.diff(out, axis=1) > 0).all()  # Sorted and distinct.
  assert out.min() >= 0 and out.max() < 100
  assert len({tuple(r) for r in out}) == 4  # Each row draws its own sample.


def test_max_equal_to_length_is_the_identity():
  pos = np.tile(np.arange(8, dtype=np.int32), (2, 1))
  np.testing.assert_array_equal(randomized_positions(RNG, pos, 8), pos)


def test_packed_documents_each_sorted_and_share_the_prefix():
  pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]], np.int32)
  out = np.asarray(randomized_positions(RNG, pos, 1000))[0]
  docs = [out[0:5], out[5:8], out[8:10]]
  for d in docs:
    assert (np.diff(d) > 0).all()
  # Gathered by the original position: every document starts at sample[0..n).
  np.testing.assert_array_equal(docs[1], docs[0][:3])
  np.testing.assert_array_equal(docs[2], docs[0][:2])


def test_deterministic_by_rng_and_jittable():
  pos = np.tile(np.arange(16, dtype=np.int32), (2, 1))
  a = randomized_positions(RNG, pos, 512)
  np.testing.assert_array_equal(a, randomized_positions(RNG, pos, 512))
  assert not np.array_equal(a, randomized_positions(jax.random.PRNGKey(1), pos, 512))
  jitted = jax.jit(randomized_positions, static_argnums=2)
  np.testing.assert_array_equal(jitted(RNG, pos, 512), a)


def test_uniform_over_the_range():
  # Each value is in the sample with probability L / max; a rough check of coverage.
  pos = np.tile(np.arange(10, dtype=np.int32), (400, 1))
  out = np.asarray(randomized_positions(RNG, pos, 40))
  freq = np.bincount(out.ravel(), minlength=40) / 400
  np.testing.assert_allclose(freq, 0.25, atol=0.1)


def test_max_below_length_raises():
  with pytest.raises(ValueError, match='max_random_position=5'):
    randomized_positions(RNG, np.zeros((1, 6), np.int32), 5)
