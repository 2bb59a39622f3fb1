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


def test_packed_documents_each_draw_their_own_sorted_sample():
  pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 0, 0]], np.int32)
  seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0]], np.int32)
  out = np.asarray(randomized_positions(RNG, pos, 1000, seg))[0]
  for d in (out[0:5], out[5:8], out[8:10]):
    assert (np.diff(d) > 0).all()
  assert len(set(out.tolist())) == out.size  # Disjoint slices of one permutation.


def test_tokens_take_the_sample_in_the_order_of_their_positions():
  pos = np.array([[2, 0, 1, 1, 0]], np.int32)
  seg = np.array([[1, 1, 1, 2, 2]], np.int32)
  out = np.asarray(randomized_positions(RNG, pos, 50, seg))[0]
  assert out[1] < out[2] < out[0] and out[4] < out[3]


def test_a_short_packed_document_spans_the_whole_range():
  """As in Ruoss et al.: a document of n tokens draws n of [0, M), wherever it is
  packed; its largest position averages M n / (n + 1), not that of a prefix."""
  rows, m = 2000, 1000
  pos = np.tile(np.r_[np.arange(40), np.arange(2)].astype(np.int32), (rows, 1))
  seg = np.tile(np.r_[np.ones(40), 2 * np.ones(2)].astype(np.int32), (rows, 1))
  out = np.asarray(randomized_positions(RNG, pos, m, seg))
  np.testing.assert_allclose(out[:, 41].mean(), m * 2 / 3, rtol=0.05)
  np.testing.assert_allclose(out[:, 39].mean(), m * 40 / 41, rtol=0.05)


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
