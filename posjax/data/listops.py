"""ListOps (Long Range Arena, Tay et al. 2021): a deterministic numpy/stdlib generator.

Follows ``lra_benchmarks/data/listops.py`` of google-research/long-range-arena:

* operators ``[MAX``, ``[MIN``, ``[MED`` (``int(np.median(args))``: for an even
  number of arguments the mean of the two middle values, truncated, so
  ``[MED 1 2 3 4 ]`` -> 2), ``[SM`` (sum mod 10); values 0-9; closing ``]``.
* a node at depth ``d < max_depth`` (the root has depth 1) is an operator with
  probability 0.25 (``VALUE_P``), otherwise a value; nodes at ``max_depth`` are
  values. An operator has ``2..max_args`` arguments (uniform), and its operator
  symbol is drawn after its arguments (as in LRA; it only affects the stream).
* a tree's *length* is the number of operator, value and ``]`` tokens (LRA's
  ``length``; parentheses are not counted) and a tree is kept iff
  ``min_length < length < max_length`` -- both bounds strict, as in LRA.
* ``inputs`` is LRA's ``to_string``: the operator node is stored as the
  left-nested pair tree ``(((op, a0), a1), ..., ])`` and every pair is written
  ``( left right )``, so ``[MAX 2 9 ]`` is ``( ( ( [MAX 2 ) 9 ) ] )``. The
  parentheses carry no information; LRA's fixed input pipeline (commit
  c209b2a, ``rename_close_brackets``) deletes them before tokenizing, and so
  does :func:`tokenize` by default.

Deviations from LRA: LRA draws from one global ``random`` stream and
de-duplicates trees with a ``set`` (so its split order depends on hashing);
here example ``i`` is drawn from its own stream seeded by ``(seed, i)``, so the
data is identical for any ``workers``, and there is no de-duplication (at LRA
lengths a repeat is astronomically unlikely; with tiny bounds it can happen).
Use different seeds per split (e.g. :func:`split_seed`).
"""
from __future__ import annotations

import multiprocessing
import random
from typing import Sequence

import numpy as np

MIN = '[MIN'
MAX = '[MAX'
MED = '[MED'
SUM_MOD = '[SM'
END = ']'
OPERATORS = (MIN, MAX, MED, SUM_MOD)  # LRA's order (matters for sampling)
VALUE_P = 0.25  # probability that a node above max_depth is an operator

# Token ids. PAD = 0; parentheses are in the vocabulary so that
# ``tokenize(..., keep_parens=True)`` can represent the raw TSV string.
PAD = 0
VOCAB = ('<pad>', MAX, MIN, MED, SUM_MOD, END) + tuple(str(v) for v in range(10)) + ('(', ')')
VOCAB_SIZE = len(VOCAB)
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}
NUM_CLASSES = 10

# train / validation / test example counts, and the (min_length, max_length)
# bounds that go with them. 'full' is LRA's 96k/2k/2k with LRA's 500/2000.
SIZES = {
    'tiny': (64, 16, 16),
    'small': (4_000, 500, 500),
    'full': (96_000, 2_000, 2_000),
}
LENGTHS = {
    'tiny': (20, 100),
    'small': (500, 2_000),
    'full': (500, 2_000),
}
SPLITS = ('train', 'validation', 'test')


def split_seed(seed: int, split: str) -> int:
  """A per-split seed, so that splits drawn from one user seed differ."""
  return int(np.random.SeedSequence([seed, SPLITS.index(split), 0x4C4F]).generate_state(1)[0])


def _example_rng(seed: int, index: int) -> random.Random:
  # SeedSequence mixes (seed, index) into well-separated streams; only
  # ``Random.random()`` is used below, whose output for a given integer seed
  # Python guarantees to be reproducible across versions.
  state = np.random.SeedSequence([int(seed), int(index)]).generate_state(4, dtype=np.uint32)
  return random.Random(int.from_bytes(state.tobytes(), 'little'))


class _TooLong(Exception):
  pass


def _sample_tree(rnd, max_depth: int, max_args: int, max_length: int):
  """One LRA tree as a token list (with LRA parentheses) and its LRA length.

  Aborts (``_TooLong``) as soon as the length reaches ``max_length``: such a
  tree would be rejected anyway, so the accepted distribution is unchanged.
  """
  u = rnd.random
  count = [0]

  def node(depth):
    r = u() if depth < max_depth else 1.0
    if r > VALUE_P:
      count[0] += 1
      if count[0] >= max_length:
        raise _TooLong
      return [str(int(u() * 10))]
    num_args = 2 + int(u() * (max_args - 1))  # uniform on 2..max_args
    count[0] += 2
    args = [node(depth + 1) for _ in range(num_args)]
    op = OPERATORS[int(u() * len(OPERATORS))]
    # to_string of (((op, a0), a1), ..., END): num_args + 1 nested pairs.
    toks = ['('] * (num_args + 1) + [op]
    toks += args[0]
    toks.append(')')
    for a in args[1:]:
      toks += a
      toks.append(')')
    toks += [END, ')']
    return toks

  toks = node(1)
  return toks, count[0]


def _generate_one(seed, index, min_length, max_length, max_depth, max_args,
                  max_tries=1_000_000):
  rnd = _example_rng(seed, index)
  for _ in range(max_tries):
    try:
      toks, length = _sample_tree(rnd, max_depth, max_args, max_length)
    except _TooLong:
      continue
    if min_length < length < max_length:
      inputs = ' '.join(toks)
      return {'inputs': inputs, 'targets': evaluate(inputs)}
  raise RuntimeError(
      f'no tree with {min_length} < length < {max_length} after {max_tries} tries '
      f'(max_depth={max_depth}, max_args={max_args})')


def _generate_range(args):
  seed, start, stop, kw = args
  return [_generate_one(seed, i, **kw) for i in range(start, stop)]


def generate(num_examples: int, *, seed: int, min_length: int = 500,
             max_length: int = 2000, max_depth: int = 10, max_args: int = 10,
             workers: int = 1, start_index: int = 0) -> list[dict]:
  """``num_examples`` ListOps examples ``{'inputs': str, 'targets': int}``.

  Example ``i`` is a function of ``(seed, start_index + i)`` and the length/
  shape arguments only, so ``workers`` (processes) never changes the result and
  ``start_index`` lets a caller generate shards of one sequence.
  """
  if num_examples < 0:
    raise ValueError('num_examples must be >= 0')
  if max_args < 2:
    raise ValueError('max_args must be >= 2')
  if max_depth < 2 or max_length - min_length < 2:
    raise ValueError('need max_depth >= 2 and max_length - min_length >= 2')
  kw = dict(min_length=min_length, max_length=max_length, max_depth=max_depth,
            max_args=max_args)
  lo, hi = start_index, start_index + num_examples
  if workers <= 1 or num_examples < 2:
    return _generate_range((seed, lo, hi, kw))
  n_chunks = min(num_examples, workers * 4)
  bounds = np.linspace(lo, hi, n_chunks + 1).astype(int)
  tasks = [(seed, int(a), int(b), kw) for a, b in zip(bounds[:-1], bounds[1:])]
  # spawn, not fork: forking a process that has started JAX's threads can deadlock.
  with multiprocessing.get_context('spawn').Pool(workers) as pool:
    parts = pool.map(_generate_range, tasks)
  return [ex for part in parts for ex in part]


def _median(args: Sequence[int]) -> int:
  s = sorted(args)
  n = len(s)
  if n % 2:
    return s[n // 2]
  return (s[n // 2 - 1] + s[n // 2]) // 2  # == int(np.median(s)) for s >= 0


_APPLY = {
    MAX: max,
    MIN: min,
    MED: _median,
    SUM_MOD: lambda a: sum(a) % 10,
}


def evaluate(inputs: str) -> int:
  """Value of a ListOps string (with or without LRA's parentheses).

  A stack machine over the whitespace-separated tokens, independent of the
  generator's tree: an operator opens a frame, a value is appended to the
  innermost frame, ``]`` closes it. Parentheses, if present, are checked for
  balance and otherwise ignored.
  """
  stack: list[tuple[str, list[int]]] = []
  result = None
  depth = 0
  for tok in inputs.split():
    if tok == '(':
      depth += 1
      continue
    if tok == ')':
      depth -= 1
      if depth < 0:
        raise ValueError('unbalanced ")"')
      continue
    if result is not None:
      raise ValueError(f'token {tok!r} after the end of the expression')
    if tok in _APPLY:
      stack.append((tok, []))
      continue
    if tok == END:
      if not stack:
        raise ValueError('"]" without an operator')
      op, args = stack.pop()
      if not args:
        raise ValueError(f'{op} without arguments')
      value = int(_APPLY[op](args))
    elif len(tok) == 1 and tok.isdigit():
      value = int(tok)
    else:
      raise ValueError(f'unknown token {tok!r}')
    if stack:
      stack[-1][1].append(value)
    else:
      result = value
  if stack or result is None or depth != 0:
    raise ValueError('incomplete expression')
  return result


def length(inputs: str) -> int:
  """LRA's length: number of operator, value and ``]`` tokens (no parentheses)."""
  return sum(1 for t in inputs.split() if t not in ('(', ')'))


def tokenize(inputs: str | Sequence[str], *, keep_parens: bool = False,
             max_length: int | None = None) -> np.ndarray:
  """Token ids (``VOCAB``) of one string (1-D) or of a batch (2-D, PAD-padded).

  Parentheses are dropped unless ``keep_parens`` (LRA's pipeline drops them).
  ``max_length`` truncates (as LRA does at 2000) and, for a batch, fixes the
  padded width; without it a batch is padded to its longest row.
  """
  def one(s):
    ids = [TOKEN_TO_ID[t] for t in s.split() if keep_parens or t not in ('(', ')')]
    if max_length is not None:
      ids = ids[:max_length]
    return np.asarray(ids, dtype=np.int32)

  if isinstance(inputs, str):
    return one(inputs)
  rows = [one(s) for s in inputs]
  width = max_length if max_length is not None else max((len(r) for r in rows), default=0)
  out = np.full((len(rows), width), PAD, dtype=np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def detokenize(ids: Sequence[int]) -> str:
  """Inverse of :func:`tokenize` for one row (PAD dropped)."""
  return ' '.join(VOCAB[int(i)] for i in ids if int(i) != PAD)
