"""Which lengths the synthetic datasets hold, and how wide their rows get.

Ruoss et al. 2023: train on lengths 1..N, test on N+1..10N. Light (numpy and
``posjax.data.synthetic`` only), so configs can size ``seq_len`` and
``max_random_position`` from the task: a task whose minimum length is above N
(passkey's fixed text) has longer rows than N suggests.
"""
from __future__ import annotations

import numpy as np

from posjax.data import synthetic

# size: (N, train examples per length, test examples per length, at most this
# many test lengths, evenly spread).
SIZES = {'tiny': (8, 8, 4, 6), 'small': (20, 200, 20, 60), 'full': (40, 2500, 100, 360)}
_PROBES = 16  # Examples generated per length to bound a row's width.


def lengths(task: str, size: str) -> tuple[range, list[int]]:
  """The training lengths and the test lengths of ``task`` at ``size``."""
  n_max, _, _, max_test_lengths = SIZES[size]
  spec = synthetic.TASKS[task]
  lo = max(1, spec.min_length)
  hi = max(n_max, lo)  # Tasks with a minimum length above N train at it alone.
  top = 10 * hi if spec.max_length is None else min(10 * hi, spec.max_length)
  test = sorted(set(np.linspace(hi + 1, top, max_test_lengths).round().astype(int)))
  return range(lo, hi + 1), [int(n) for n in test]


def row_width(task: str, length: int) -> int:
  """The most tokens a model row of ``inputs SEP targets`` takes at ``length``
  (over the first ``_PROBES`` examples of a seed; the pipelines check the data)."""
  examples = synthetic.generate(task, length=length, num_examples=_PROBES, seed=0)
  return max(e['inputs'].size + e['targets'].size for e in examples)  # + SEP - shift.


def widths(task: str, size: str) -> tuple[int, int]:
  """(widest training row, widest test row) of ``task`` at ``size``."""
  train, test = lengths(task, size)
  return row_width(task, train[-1]), row_width(task, test[-1])


def length_splits(max_train_length: int, max_test_length: int | None = None
                  ) -> tuple[range, range]:
  """Ruoss et al. 2023: train lengths ``1..N`` (sample uniformly), test ``N+1..M``.

  ``M`` defaults to ``10 * N``; the paper used N = 40, M = 500 (pass
  ``max_test_length=500``).  Report accuracy per test length.  Callers should
  clip the train range to ``TASKS[task].min_length`` (e.g. passkey,
  missing_duplicate_string).
  """
  n = int(max_train_length)
  m = 10 * n if max_test_length is None else int(max_test_length)
  if n < 1 or m <= n:
    raise ValueError(f'need 1 <= max_train_length < max_test_length, got {n}, {m}')
  return range(1, n + 1), range(n + 1, m + 1)
