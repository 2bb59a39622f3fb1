"""Pathfinder generator: shapes, balance, determinism, and the same-contour property."""
from collections import deque

import numpy as np
import pytest

from posjax.data import pathfinder


def flood(mask, start):
  """8-connected component of ``mask`` containing ``start`` (bool array)."""
  seen = np.zeros_like(mask, bool)
  if not mask[tuple(start)]:
    return seen
  R, C = mask.shape
  seen[tuple(start)] = True
  todo = deque([tuple(start)])
  while todo:
    y, x = todo.popleft()
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        yy, xx = y + dy, x + dx
        if 0 <= yy < R and 0 <= xx < C and mask[yy, xx] and not seen[yy, xx]:
          seen[yy, xx] = True
          todo.append((yy, xx))
  return seen


def n_components(mask):
  seen = np.zeros_like(mask, bool)
  n = 0
  for p in zip(*np.nonzero(mask)):
    if not seen[p]:
      seen |= flood(mask, p)
      n += 1
  return n


def dilate8(mask):
  out = mask.copy()
  p = np.pad(mask, 1)
  for dy in range(3):
    for dx in range(3):
      out |= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
  return out


@pytest.fixture(scope='module')
def hard():
  return pathfinder.generate(32, seed=0, difficulty='hard', return_meta=True)


def test_shapes_dtypes(hard):
  assert hard['image'].shape == (32, 32, 32, 1) and hard['image'].dtype == np.uint8
  assert hard['label'].shape == (32,) and hard['label'].dtype == np.int64
  assert set(np.unique(hard['image'])) == {0, 255}
  assert hard['contour_ids'].shape == (32, 32, 32)
  assert hard['endpoints'].shape == (32, 2, 2, 2)
  assert hard['markers'].shape == (32, 2, 2)
  assert hard['marker_contours'].shape == (32, 2)
  plain = pathfinder.generate(2, seed=0)
  assert set(plain) == {'image', 'label'}


def test_labels_balanced(hard):
  assert set(hard['label'].tolist()) == {0, 1}
  assert hard['label'].sum() == 16
  for n in (2, 10, 30):
    assert pathfinder.generate(n, seed=5, difficulty='easy')['label'].sum() == n // 2
  # not a trivial alternation
  assert not (hard['label'][::2] == hard['label'][0]).all()


def test_deterministic_by_seed(hard):
  again = pathfinder.generate(32, seed=0, difficulty='hard', return_meta=True)
  for k in hard:
    np.testing.assert_array_equal(again[k], hard[k])
  other = pathfinder.generate(32, seed=1, difficulty='hard')
  assert not np.array_equal(other['image'], hard['image'])
  part = pathfinder.generate(4, seed=0, difficulty='hard', start_index=6)
  np.testing.assert_array_equal(part['image'], hard['image'][6:10])
  np.testing.assert_array_equal(part['label'], hard['label'][6:10])


def test_images_not_blank(hard):
  ink = (hard['image'][..., 0] > 0).sum(axis=(1, 2))
  assert (ink > 40).all() and (ink < 0.5 * 32 * 32).all()


def test_same_contour_property(hard):
  for img, label, ids, markers, mc, ends in zip(
      hard['image'][..., 0], hard['label'], hard['contour_ids'], hard['markers'],
      hard['marker_contours'], hard['endpoints']):
    a, b = map(tuple, markers)
    # markers sit on target contours, at the ends Linsley's rule picks
    assert ids[a] == mc[0] and ids[b] == mc[1] and set(mc.tolist()) <= {1, 2}
    assert a == tuple(ends[mc[0] - 1, 0]) and b == tuple(ends[mc[1] - 1, 1])
    assert (mc[0] == mc[1]) == bool(label)
    own = flood(ids == mc[0], a)
    if label:
      assert own[b], 'positive: both markers on one connected contour'
    else:
      assert not own[b]
      assert flood(ids == mc[1], b)[b]
    # the image itself: marker A's 8-connected component holds B iff label 1
    assert flood(img > 0, a)[b] == bool(label)
    # marker discs are drawn
    assert img[a] == 255 and img[b] == 255


def test_contours_connected_and_separate(hard):
  for ids in hard['contour_ids'][:12]:
    n = int(ids.max())
    assert n >= 3  # two targets and at least one distractor
    for c in range(1, n + 1):
      mask = ids == c
      assert mask.any() and n_components(mask) == 1
      assert not (dilate8(mask) & (ids > 0) & ~mask).any()


def test_difficulty_sets_contour_length():
  sizes = {}
  for d in ('easy', 'medium', 'hard'):
    out = pathfinder.generate(12, seed=2, difficulty=d, return_meta=True)
    sizes[d] = np.mean([(ids == 1).sum() + (ids == 2).sum() for ids in out['contour_ids']]) / 2
  assert sizes['easy'] < sizes['medium'] < sizes['hard']
  # a target contour of n paddles of length p covers about n * p pixels
  p = pathfinder.geometry(32)['paddle']
  assert 0.6 * 14 * p < sizes['hard'] <= 14 * p + 1
  with pytest.raises(ValueError):
    pathfinder.generate(1, seed=0, difficulty='impossible')


def test_turns_are_bounded():
  import random
  rnd = random.Random(0)
  for cont in (1.0, 1.8):
    turns = np.array([pathfinder._sample_turn(rnd, cont, np.pi / (2 * cont)) for _ in range(2000)])
    assert np.abs(turns).max() < np.pi / (2 * cont)
    # cos^2 weighting: mass concentrated near straight continuation
    assert np.mean(np.abs(turns)) < 0.3 * np.pi / (2 * cont) + 0.1


def test_layout_does_not_depend_on_label(monkeypatch):
  base = pathfinder.generate(6, seed=3, return_meta=True)
  orig = pathfinder._label
  monkeypatch.setattr(pathfinder, '_label', lambda s, i: 1 - orig(s, i))
  flip = pathfinder.generate(6, seed=3, return_meta=True)
  np.testing.assert_array_equal(flip['label'], 1 - base['label'])
  np.testing.assert_array_equal(flip['contour_ids'], base['contour_ids'])
  np.testing.assert_array_equal(flip['endpoints'], base['endpoints'])
  # only the terminal marker moves
  np.testing.assert_array_equal(flip['markers'][:, 0], base['markers'][:, 0])
  assert (flip['markers'][:, 1] != base['markers'][:, 1]).any(axis=1).all()


def test_resolution_128():
  out = pathfinder.generate(1, seed=0, resolution=128, return_meta=True)
  assert out['image'].shape == (1, 128, 128, 1) and out['image'].dtype == np.uint8
  img, ids = out['image'][0, ..., 0], out['contour_ids'][0]
  a, b = map(tuple, out['markers'][0])
  assert (img > 0).sum() > 200
  assert flood(img > 0, a)[b] == bool(out['label'][0])
  assert flood(ids == out['marker_contours'][0, 0], a)[b] == bool(out['label'][0])
