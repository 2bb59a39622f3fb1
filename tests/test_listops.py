"""ListOps generator: LRA format, targets, bounds, determinism, parallel workers."""
import numpy as np
import pytest

from posjax.data import listops

TINY = dict(min_length=20, max_length=100)


@pytest.fixture(scope='module')
def tiny():
  return listops.generate(64, seed=0, **TINY)


@pytest.mark.parametrize('expr, value', [
    ('[MAX 2 9 ]', 9),
    ('[MIN 4 1 7 ]', 1),
    ('[MED 1 2 3 4 ]', 2),  # int(np.median([1, 2, 3, 4])) = int(2.5) = 2
    ('[MED 3 9 ]', 6),
    ('[MED 0 9 1 ]', 1),
    ('[SM 9 9 ]', 8),
    ('[SM 5 5 ]', 0),
    ('[MAX 1 [MIN 7 3 ] [SM 9 9 9 ] ]', 7),
    ('( ( ( [MAX 2 ) 9 ) ] )', 9),  # LRA's parenthesised form
    ('7', 7),
])
def test_operator_semantics(expr, value):
  assert listops.evaluate(expr) == value


def test_median_matches_lra_rule():
  rng = np.random.default_rng(0)
  for _ in range(200):
    args = rng.integers(0, 10, rng.integers(2, 11)).tolist()
    expr = '[MED ' + ' '.join(map(str, args)) + ' ]'
    assert listops.evaluate(expr) == int(np.median(args))


@pytest.mark.parametrize('bad', ['[MAX 1 2', '1 2', '[MAX ]', ']', '( [MAX 1 2 ]', '[FOO 1 ]'])
def test_evaluate_rejects_malformed(bad):
  with pytest.raises(ValueError):
    listops.evaluate(bad)


def test_lra_string_format():
  # A hand-built LRA tree: (((op, a0), a1), END) written as '( l r )' pairs.
  ex = listops.generate(1, seed=3, **TINY)[0]
  toks = ex['inputs'].split()
  assert toks[0] == '(' and toks[-1] == ')'
  assert set(toks) <= set(listops.VOCAB[1:])
  # Every operator is preceded by num_args + 1 opening parentheses and every
  # argument and the closing ']' are followed by ')'.
  assert toks.count('(') == toks.count(')')
  n_ops = sum(t in listops.OPERATORS for t in toks)
  assert toks.count(']') == n_ops
  n_vals = sum(t.isdigit() for t in toks)
  n_args = n_vals + n_ops - 1  # every node except the root is an argument
  assert toks.count('(') == n_args + n_ops
  for i, t in enumerate(toks):
    if t in listops.OPERATORS:
      assert toks[i - 1] == '('
    if t == ']':
      assert toks[i + 1] == ')' and toks[i - 1] == ')'


def test_targets_match_independent_evaluator(tiny):
  for ex in tiny:
    assert isinstance(ex['targets'], int) and 0 <= ex['targets'] <= 9
    assert ex['targets'] == listops.evaluate(ex['inputs'])
    # the evaluator does not need the parentheses
    stripped = ' '.join(t for t in ex['inputs'].split() if t not in ('(', ')'))
    assert listops.evaluate(stripped) == ex['targets']


def test_lengths_within_bounds(tiny):
  for ex in tiny:
    assert TINY['min_length'] < listops.length(ex['inputs']) < TINY['max_length']
    assert len(listops.tokenize(ex['inputs'])) == listops.length(ex['inputs'])


def test_lra_bounds_default():
  exs = listops.generate(4, seed=1)  # LRA defaults: 500 < length < 2000
  for ex in exs:
    assert 500 < listops.length(ex['inputs']) < 2000
    assert ex['targets'] == listops.evaluate(ex['inputs'])


def test_depth_and_args_respected():
  exs = listops.generate(32, seed=2, min_length=10, max_length=60, max_depth=4, max_args=3)
  for ex in exs:
    depth = max_depth = 0
    stack = []
    for t in ex['inputs'].split():
      if t in listops.OPERATORS:
        stack.append(0)
        depth += 1
        max_depth = max(max_depth, depth)
        if len(stack) > 1:
          stack[-2] += 1
      elif t == ']':
        assert 2 <= stack.pop() <= 3
        depth -= 1
      elif t.isdigit():
        stack[-1] += 1
    # operators live at depth < max_depth (root depth 1): at most 3 levels
    assert max_depth <= 3


def test_deterministic_by_seed(tiny):
  assert listops.generate(64, seed=0, **TINY) == tiny
  other = listops.generate(64, seed=1, **TINY)
  assert [e['inputs'] for e in other] != [e['inputs'] for e in tiny]


def test_example_depends_only_on_seed_and_index(tiny):
  assert listops.generate(10, seed=0, **TINY) == tiny[:10]
  assert listops.generate(10, seed=0, start_index=20, **TINY) == tiny[20:30]


def test_workers_do_not_change_result(tiny):
  assert listops.generate(64, seed=0, workers=2, **TINY) == tiny


def test_tokenize_and_vocab(tiny):
  assert listops.VOCAB[listops.PAD] == '<pad>' and listops.PAD == 0
  assert len(set(listops.VOCAB)) == listops.VOCAB_SIZE == 18
  ids = listops.tokenize('( ( ( [MAX 2 ) 9 ) ] )')
  assert ids.dtype == np.int32
  assert listops.detokenize(ids) == '[MAX 2 9 ]'
  full = listops.tokenize('( ( ( [MAX 2 ) 9 ) ] )', keep_parens=True)
  assert listops.detokenize(full) == '( ( ( [MAX 2 ) 9 ) ] )'
  batch = listops.tokenize([e['inputs'] for e in tiny[:5]], max_length=64)
  assert batch.shape == (5, 64) and batch.dtype == np.int32
  assert (batch[:, 0] != listops.PAD).all()
  assert batch.max() < listops.VOCAB_SIZE
  for row, ex in zip(batch, tiny[:5]):
    toks = [t for t in ex['inputs'].split() if t not in ('(', ')')]
    assert listops.detokenize(row) == ' '.join(toks[:64])
    n = min(64, listops.length(ex['inputs']))
    assert (row[:n] != listops.PAD).all() and (row[n:] == listops.PAD).all()


def test_sizes():
  assert listops.SIZES['full'] == (96_000, 2_000, 2_000)
  assert listops.LENGTHS['full'] == (500, 2_000)
  assert set(listops.SIZES) == set(listops.LENGTHS) == {'tiny', 'small', 'full'}
  seeds = {listops.split_seed(0, s) for s in listops.SPLITS}
  assert len(seeds) == 3
