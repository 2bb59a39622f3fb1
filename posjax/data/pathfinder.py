"""Pathfinder (Linsley et al. 2018; LRA's Pathfinder / Path-X): a numpy generator.

An image holds two *target* contours of ``contour_length`` paddles, a number of
short distractor contours, and two circular markers. Label 1 iff both markers
sit on the ends of the same contour.

Construction, after Linsley's ``snakes2.py`` (github drewlinsley/pathfinder)
and the settings LRA documents in ``lra_benchmarks/data/pathfinder.py``:

* a contour is a chain of straight paddles; paddle ``k+1`` turns by ``delta``
  from paddle ``k``, drawn with density ``cos(continuity * delta)**2`` on
  ``|delta| < pi / (2 * continuity)`` (Linsley's ``get_coords_cmf``
  weighting). LRA: continuity 1.0 at 32 px (turns < 90 deg), 1.8 above (< 50).
* the two target contours grow from *origin* points ``seed`` px apart
  (Linsley's seed_distance: 7 at 32 px, 20 at 128 px). A positive puts the
  markers on the origin and the terminal end of one target contour; a negative
  on the origin of one and the terminal end of the other (Linsley's rule). The
  layout (both targets, all distractors, and space reserved around all four
  target ends) is drawn before the label is used, so only the markers depend
  on the label.
* difficulty = target contour length: Linsley's ``curv_baseline`` /
  ``curv_contour_length_9`` / ``curv_contour_length_14`` = LRA's TFDS splits
  easy / intermediate / hard; here ``easy`` 6, ``medium`` 9, ``hard`` 14
  paddles (LRA's Pathfinder and Path-X use hard). Distractors have
  ``contour_length // 3`` paddles and there are ``budget // that`` of them
  (32 px: 10 / 6 / 5); distractors that do not fit are dropped (as Linsley's
  ``allow_incomplete``), which at 32 px / hard happens often.
* per-resolution sizes (paddle length, marker radius, seed distance,
  continuity, distractor budget, separation, thickness): ``LRA_GEOMETRY``.

Deviations (by design, for an exact label): paddles are drawn end to end
(Linsley leaves a gap between paddles), so a contour is one 8-connected pixel
set; different contours and markers never touch (at least ``sep`` empty pixels
between them). Hence, on the binarised image, the 8-connected component of
one marker contains the other iff the label is 1. Images are binary (0/255),
not anti-aliased and without Linsley's contrast jitter; lines are 1 px thick
(3 px at 256).

Example ``i`` depends only on ``(seed, i)`` and the settings; labels come in
pairs (examples ``2j`` and ``2j + 1`` have opposite labels, in random order),
so any even ``num_examples`` is exactly balanced.
"""
from __future__ import annotations

import math
import random

import numpy as np

# Target contour length (paddles) per difficulty: Linsley's curv_baseline,
# curv_contour_length_9 and curv_contour_length_14 (LRA's easy/intermediate/
# hard TFDS splits; LRA reports on hard). Distractors have length // 3 paddles.
DIFFICULTIES = {'easy': 6, 'medium': 9, 'hard': 14}

# Per-resolution settings from the docstrings of LRA's TFDS builders
# (lra_benchmarks/data/pathfinder.py: Pathfinder32/64/128/256), translated:
# ``paddle`` = our (gap-free) paddle length ~ Linsley's paddle_length +
# paddle_margin; ``budget`` = distractor paddle budget (num_distractor_snakes
# = budget // distractor_length); ``sep`` ~ paddle_margin; ``brush``: line
# half-width (0 -> 1 px, 1 -> 3 px) for paddle_thickness 0.5 / 1 / 1.5 / 2.
LRA_GEOMETRY = {
    32: dict(paddle=3.0, marker=1.5, seed=7, continuity=1.0, budget=20, sep=1, brush=0),
    64: dict(paddle=6.0, marker=2.5, seed=12, continuity=1.8, budget=22, sep=1, brush=0),
    128: dict(paddle=7.5, marker=3.0, seed=20, continuity=1.8, budget=35, sep=2, brush=0),
    256: dict(paddle=8.0, marker=5.0, seed=27, continuity=1.8, budget=30, sep=3, brush=1),
}

# train / validation / test counts. LRA's input pipeline
# (lra_benchmarks/image/input_pipeline.py) splits a difficulty 80/10/10
# ('hard[:80%]', '[80%:90%]', '[90%:]'); 'full' assumes the usual 200k images.
SIZES = {
    'tiny': (64, 16, 16),
    'small': (8_000, 1_000, 1_000),
    'full': (160_000, 20_000, 20_000),
}

_TRIES_PADDLE = 8
_TRIES_CONTOUR = 20
_TRIES_LAYOUT = 500
_TRIES_DISTRACTOR = 4


def _disc(radius: float) -> list[tuple[int, int]]:
  """Integer offsets (y, x) with y^2 + x^2 <= radius^2."""
  r = int(math.floor(radius))
  return [(y, x) for y in range(-r, r + 1) for x in range(-r, r + 1)
          if y * y + x * x <= radius * radius]


def geometry(resolution: int) -> dict:
  """Pixel settings at ``resolution``: ``LRA_GEOMETRY`` or, for other sizes,
  the 32-px entry scaled by ``resolution / 32`` (continuity 1.8)."""
  if resolution in LRA_GEOMETRY:
    return dict(LRA_GEOMETRY[resolution])
  u = resolution / 32
  return dict(paddle=3.0 * u, marker=max(1.5, 1.5 * u), seed=max(7, round(7 * u)),
              continuity=1.0 if u <= 1 else 1.8, budget=20,
              sep=max(1, round(u / 2)), brush=int(u // 8))


class _Canvas:
  """Pixel bookkeeping for one image; pixels are flat indices ``y * R + x``."""

  def __init__(self, resolution, geo):
    R = self.R = resolution
    self.geo = geo
    self.brush_r = geo['brush']
    self.brush = [dy * R + dx for dy, dx in _disc(geo['brush'] + 0.5)]
    s = geo['sep']
    self.sep = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)]
    self.marker = _disc(geo['marker'])
    self.marker_r = max(max(abs(dy), abs(dx)) for dy, dx in self.marker)
    self.max_turn = math.pi / (2 * geo['continuity'])
    # blocked[i]: a new object (of another contour) may not cover pixel i.
    self.blocked = bytearray(R * R)
    self.ids = bytearray(R * R)

  def segment(self, p0, p1, border, *masks):
    """Pixels of segment p0 -> p1 (DDA line, 8-connected, brushed).

    None if it leaves the ``border`` frame or covers a pixel set in ``masks``.
    """
    R = self.R
    lo = border + self.brush_r
    hi = R - 1 - lo
    y0, x0 = p0
    dy, dx = p1[0] - y0, p1[1] - x0
    # one sample per pixel step along the major axis (DDA): consecutive
    # rounded samples are 8-neighbours, so the line is 1 px and 8-connected.
    n = int(math.ceil(max(abs(dy), abs(dx)))) or 1
    out = set()
    for j in range(n + 1):
      y = math.floor(y0 + dy * j / n + 0.5)
      x = math.floor(x0 + dx * j / n + 0.5)
      if y < lo or y > hi or x < lo or x > hi:
        return None
      c = y * R + x
      for b in self.brush:
        out.add(c + b)
    for m in masks:
      for i in out:
        if m[i]:
          return None
    return out

  def disc_at(self, p):
    """Flat pixels of the marker disc centred on (y, x); None if it leaves the image."""
    R = self.R
    y, x = p
    r = self.marker_r
    if y - r < 0 or x - r < 0 or y + r >= R or x + r >= R:
      return None
    return {(y + dy) * R + (x + dx) for dy, dx in self.marker}

  def block(self, pix, target=None):
    """Mark ``pix`` dilated by ``sep`` (Chebyshev) in ``target`` (default: blocked)."""
    target = self.blocked if target is None else target
    R = self.R
    for i in pix:
      y, x = divmod(i, R)
      for dy, dx in self.sep:
        yy, xx = y + dy, x + dx
        if 0 <= yy < R and 0 <= xx < R:
          target[yy * R + xx] = 1

  def hits(self, pix, mask):
    return any(mask[i] for i in pix)


def _sample_turn(rnd, continuity, max_turn):
  """A turn angle with density ~ cos(continuity * delta)^2 (Linsley's weights)."""
  while True:
    d = (2 * rnd.random() - 1) * max_turn
    if rnd.random() < math.cos(continuity * d) ** 2:
      return d


def _grow(cv, rnd, start, angle, n_paddles, border, extra_block=None):
  """Grow one contour from ``start``; returns (pixels, end point) or None.

  Paddles stay ``border`` px inside the image, avoid ``cv.blocked`` (and
  ``extra_block``), and keep ``sep`` px away from the contour's own paddles
  older than the previous two (no self-touching loops).
  """
  L = cv.geo['paddle']
  cont, max_turn = cv.geo['continuity'], cv.max_turn
  own_old = bytearray(cv.R * cv.R)
  masks = [cv.blocked, own_old] + ([extra_block] if extra_block is not None else [])
  paddles = []
  p = (float(start[0]), float(start[1]))
  for k in range(n_paddles):
    for _ in range(_TRIES_PADDLE):
      a = angle + (_sample_turn(rnd, cont, max_turn) if k else 0.0)
      q = (p[0] + L * math.sin(a), p[1] + L * math.cos(a))
      pix = cv.segment(p, q, border, *masks)
      if pix is not None:
        break
    else:
      return None
    paddles.append(pix)
    if len(paddles) >= 3:
      cv.block(paddles[-3], own_old)
    p, angle = q, a
  pix = set().union(*paddles)
  end = (math.floor(p[0] + 0.5), math.floor(p[1] + 0.5))
  return pix, end


def _layout(rnd, resolution, difficulty):
  """Targets, distractors and the 4 reserved target ends; None on failure."""
  n_target = DIFFICULTIES[difficulty]
  geo = geometry(resolution)
  n_dis_len = n_target // 3
  n_dis = geo['budget'] // n_dis_len
  cv = _Canvas(resolution, geo)
  R = resolution
  r = cv.marker_r
  border = r  # the marker disc around a target end must fit in the image
  far = 2 * r + geo['sep']  # Chebyshev distance beyond which two discs are apart

  # Two origins ``seed`` px apart (Linsley's seed_distance), random direction.
  o1 = (border + rnd.random() * (R - 1 - 2 * border), border + rnd.random() * (R - 1 - 2 * border))
  phi = (2 * rnd.random() - 1) * math.pi
  dist = geo['seed']
  o2 = (o1[0] + dist * math.sin(phi), o1[1] + dist * math.cos(phi))
  origins = [(math.floor(o[0] + 0.5), math.floor(o[1] + 0.5)) for o in (o1, o2)]
  discs = [cv.disc_at(o) for o in origins]
  if discs[1] is None or discs[0] is None:
    return None
  if max(abs(origins[0][0] - origins[1][0]), abs(origins[0][1] - origins[1][1])) <= far:
    return None

  ends = []
  for c in range(2):
    # the other target's origin disc is off limits for this contour
    other = bytearray(R * R)
    cv.block(discs[1 - c], other)
    for _ in range(_TRIES_CONTOUR):
      angle = (2 * rnd.random() - 1) * math.pi
      got = _grow(cv, rnd, origins[c], angle, n_target, border, other)
      if got is None:
        continue
      pix, end = got
      end_disc = cv.disc_at(end)
      if (end_disc is not None and not cv.hits(end_disc, cv.blocked)
          and not cv.hits(end_disc, other)
          and max(abs(end[0] - origins[c][0]), abs(end[1] - origins[c][1])) > far):
        break
    else:
      return None
    ends.append((origins[c], end))
    for i in pix:
      cv.ids[i] = c + 1
    cv.block(pix)
    cv.block(discs[c])
    cv.block(end_disc)

  # Distractors: anywhere, clear of everything drawn or reserved so far.
  next_id = 3
  for _ in range(n_dis):
    for _ in range(_TRIES_DISTRACTOR):
      start = (rnd.random() * (R - 1), rnd.random() * (R - 1))
      if cv.blocked[math.floor(start[0] + 0.5) * R + math.floor(start[1] + 0.5)]:
        continue
      got = _grow(cv, rnd, start, (2 * rnd.random() - 1) * math.pi, n_dis_len, 0)
      if got is not None:
        break
    else:
      continue  # allow_incomplete, as Linsley's distractors
    pix, _ = got
    for i in pix:
      cv.ids[i] = next_id
    cv.block(pix)
    next_id += 1
  return cv, ends


def _example_rng(seed: int, index: int) -> random.Random:
  # SeedSequence mixes (seed, index); only Random.random() is used, whose
  # stream for a given integer seed Python keeps stable across versions.
  state = np.random.SeedSequence([int(seed), int(index), 0x5046]).generate_state(4)
  return random.Random(int.from_bytes(state.tobytes(), 'little'))


def _label(seed: int, index: int) -> int:
  """Examples 2j and 2j+1 get opposite labels, in an order drawn from (seed, j)."""
  coin = int(np.random.SeedSequence([int(seed), int(index) // 2, 0x4C42]).generate_state(1)[0] & 1)
  return coin if index % 2 == 0 else 1 - coin


def _example(seed, index, resolution, difficulty):
  label = _label(seed, index)
  rnd = _example_rng(seed, index)
  for _ in range(_TRIES_LAYOUT):
    got = _layout(rnd, resolution, difficulty)
    if got is not None:
      break
  else:
    raise RuntimeError(f'pathfinder: no layout after {_TRIES_LAYOUT} tries '
                       f'(resolution={resolution}, difficulty={difficulty!r})')
  cv, ends = got
  R = resolution
  # Which target carries the origin marker, drawn after the layout (label-free).
  k = int(rnd.random() * 2)
  other = k if label == 1 else 1 - k
  markers = np.array([ends[k][0], ends[other][1]], np.int32)
  ids = np.frombuffer(bytes(cv.ids), np.uint8).reshape(R, R).astype(np.int16)
  image = np.where(ids > 0, 255, 0).astype(np.uint8).ravel()
  for m in markers:
    image[list(cv.disc_at(tuple(int(v) for v in m)))] = 255
  endpoints = np.array([[e[0], e[1]] for e in ends], np.int32)
  return image.reshape(R, R), label, dict(
      contour_ids=ids, endpoints=endpoints, markers=markers,
      marker_contours=np.array([k + 1, other + 1], np.int32))


def generate(num_examples: int, *, resolution: int = 32, seed: int,
             difficulty: str = 'hard', return_meta: bool = False,
             start_index: int = 0) -> dict:
  """``dict(image=uint8[N, R, R, 1] in {0, 255}, label=int64[N])``.

  Example ``n`` is a function of ``(seed, start_index + n)`` and the settings
  only (``start_index`` lets a builder generate shards of one sequence); labels
  are paired so that an even count from an even ``start_index`` is exactly
  half positive. ``difficulty``: 'easy' | 'medium' (= LRA 'intermediate') |
  'hard'. With ``return_meta``, also:

  * ``contour_ids``: int16[N, R, R], 0 background, 1 and 2 the target
    contours, 3.. the distractors (contour pixels only, markers excluded);
  * ``endpoints``: int32[N, 2, 2, 2], (target contour, origin/terminal, y/x);
  * ``markers``: int32[N, 2, 2] marker centres (y, x), each a contour end;
  * ``marker_contours``: int32[N, 2], the contour id under each marker
    (equal iff label 1).
  """
  difficulty = {'intermediate': 'medium'}.get(difficulty, difficulty)  # LRA's name
  if difficulty not in DIFFICULTIES:
    raise ValueError(f'difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}')
  if resolution < 16:
    raise ValueError('resolution must be >= 16')
  images = np.zeros((num_examples, resolution, resolution, 1), np.uint8)
  labels = np.zeros((num_examples,), np.int64)
  metas = []
  for n in range(num_examples):
    img, lab, meta = _example(seed, start_index + n, resolution, difficulty)
    images[n, :, :, 0] = img
    labels[n] = lab
    if return_meta:
      metas.append(meta)
  out = dict(image=images, label=labels)
  if return_meta:
    for key in ('contour_ids', 'endpoints', 'markers', 'marker_contours'):
      out[key] = (np.stack([m[key] for m in metas]) if metas
                  else np.zeros((0,), np.int32))
  return out
