"""Synthetic length-generalisation tasks (pure numpy, fast)."""
import re

import numpy as np
import pytest

from posjax.data import synthetic as S

NAMES = ['reverse_string', 'duplicate_string', 'missing_duplicate_string',
         'parity_check', 'binary_addition', 'bucket_sort', 'modular_arithmetic',
         'copy', 'passkey', 'associative_recall']


def lengths_for(task):
  if task == 'passkey':
    return [S.TASKS[task].min_length, 300, 1000, 3000]
  lo = S.TASKS[task].min_length
  return sorted({lo, lo + 1, 3, 7, 40, 41, 128, 400})


def test_task_names():
  assert sorted(S.TASKS) == sorted(NAMES)


def test_vocab_layout():
  specials = [S.PAD, S.BOS, S.EOS, S.SEP, S.QUERY, S.BLANK, S.EMPTY,
              S.PLUS, S.MINUS, S.TIMES]
  assert S.PAD == 0 and len(set(specials)) == len(specials)
  assert max(specials) < S.SYMBOL_OFFSET
  assert S.SYMBOL_OFFSET + S.NUM_SYMBOLS == S.BYTE_OFFSET
  assert S.VOCAB_SIZE == S.BYTE_OFFSET + 256


@pytest.mark.parametrize('task', NAMES)
def test_targets_match_solver_and_shapes(task):
  spec = S.TASKS[task]
  for n in lengths_for(task):
    for ex in S.generate(task, length=n, num_examples=8, seed=n):
      inp, tgt = ex['inputs'], ex['targets']
      assert ex['length'] == n
      assert inp.dtype == np.int32 and tgt.dtype == np.int32
      assert inp.ndim == 1 and tgt.ndim == 1 and inp.size > 0 and tgt.size > 0
      np.testing.assert_array_equal(S.solve(task, inp), tgt)
      # Vocabulary: in range, no PAD/SEP/BOS inside an example.
      both = np.concatenate([inp, tgt])
      assert both.min() >= 0 and both.max() < S.VOCAB_SIZE
      assert not np.isin(both, [S.PAD, S.SEP, S.BOS]).any()
      if spec.input_length(n) is not None:
        assert inp.size == spec.input_length(n)
      if spec.target_length(n) is not None:
        assert tgt.size == spec.target_length(n)


@pytest.mark.parametrize('task,n,expected_inputs,expected_targets', [
    ('reverse_string', 5, 5, 5), ('duplicate_string', 5, 5, 10),
    ('missing_duplicate_string', 6, 6, 1), ('missing_duplicate_string', 7, 7, 1),
    ('parity_check', 9, 9, 1), ('bucket_sort', 9, 9, 9),
    ('modular_arithmetic', 9, 9, 1), ('modular_arithmetic', 10, 9, 1),
    ('copy', 9, 9, 9), ('binary_addition', 9, 9, None),
])
def test_lengths_respect_n(task, n, expected_inputs, expected_targets):
  for ex in S.generate(task, length=n, num_examples=5, seed=0):
    assert ex['inputs'].size == expected_inputs
    if expected_targets is not None:
      assert ex['targets'].size == expected_targets


def test_task_specific_structure():
  n = 11
  for ex in S.generate('missing_duplicate_string', length=n, num_examples=20, seed=1):
    inp = ex['inputs']
    assert (inp == S.BLANK).sum() == 1 and inp[-1] == S.EMPTY
  for ex in S.generate('binary_addition', length=n, num_examples=20, seed=1):
    inp, tgt = ex['inputs'], ex['targets']
    assert (inp == S.PLUS).sum() == 1 and tgt[-1] == S.EOS and (tgt == S.EOS).sum() == 1
    assert tgt.size <= n
    assert tgt.size == 2 or tgt[-2] == S.sym(1)  # no leading zeros (LE: last bit)
  for ex in S.generate('bucket_sort', length=50, num_examples=5, seed=1):
    assert set((ex['inputs'] - S.SYMBOL_OFFSET).tolist()) <= set(range(5))
  for ex in S.generate('modular_arithmetic', length=n, num_examples=20, seed=1):
    inp = ex['inputs']
    assert np.isin(inp[1::2], [S.PLUS, S.MINUS, S.TIMES]).all()
    assert set((inp[0::2] - S.SYMBOL_OFFSET).tolist()) <= set(range(5))


# Shorthand: ints 0..4 are symbols; specials are given by name.
_P, _M, _T, _B, _E, _EOS = 'PLUS', 'MINUS', 'TIMES', 'BLANK', 'EMPTY', 'EOS'


def _enc(xs):
  return np.array([getattr(S, x) if isinstance(x, str) else x + S.SYMBOL_OFFSET
                   for x in xs], np.int32)


@pytest.mark.parametrize('task,inputs,targets', [
    # Little-endian binary addition (paper's examples): 4 + 22 = 26, 9 + 32 = 41.
    ('binary_addition', [0, 0, 1, _P, 0, 1, 1, 0, 1], [0, 1, 0, 1, 1, _EOS]),
    ('binary_addition', [1, 0, 0, 1, _P, 0, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 1, _EOS]),
    ('binary_addition', [0, 0], [0, _EOS]),
    # Standard precedence, mod 5 (paper's examples).
    ('modular_arithmetic', [1, _P, 2, _T, 3], [2]),
    ('modular_arithmetic', [1, _M, 1, _M, 1], [4]),
    ('modular_arithmetic', [0, _T, 1, _P, 4, _T, 3, _M, 2], [0]),
    ('modular_arithmetic', [1, _M, 2, _T, 3], [0]),
    ('missing_duplicate_string', [0, 1, 1, 0, 0, _B, 1, 0], [1]),
    ('missing_duplicate_string', [1, 0, 1, 1, _B, 1, _E], [0]),
    ('parity_check', [1, 1, 0, 1], [1]),
    ('reverse_string', [1, 0, 0], [0, 0, 1]),
    ('bucket_sort', [4, 0, 3, 0], [0, 0, 3, 4]),
])
def test_solver_known_answers(task, inputs, targets):
  np.testing.assert_array_equal(S.solve(task, _enc(inputs)), _enc(targets))


def test_modular_arithmetic_vs_python_eval():
  for n in (1, 3, 5, 9, 21):
    for ex in S.generate('modular_arithmetic', length=n, num_examples=30, seed=7):
      chars = {S.PLUS: '+', S.MINUS: '-', S.TIMES: '*'}
      text = ''.join(chars.get(t, str(t - S.SYMBOL_OFFSET)) for t in ex['inputs'].tolist())
      assert ex['targets'][0] - S.SYMBOL_OFFSET == eval(text) % 5  # noqa: S307


@pytest.mark.parametrize('task', NAMES)
def test_deterministic_by_seed(task):
  n = 400 if task == 'passkey' else 12
  a = S.generate(task, length=n, num_examples=6, seed=3)
  b = S.generate(task, length=n, num_examples=6, seed=3)
  c = S.generate(task, length=n, num_examples=6, seed=4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
    np.testing.assert_array_equal(x['targets'], y['targets'])
  assert any(not np.array_equal(x['inputs'], z['inputs']) for x, z in zip(a, c))
  # Example i does not depend on num_examples / start_index slicing.
  tail = S.generate(task, length=n, num_examples=2, seed=3, start_index=4)
  for x, y in zip(a[4:], tail):
    np.testing.assert_array_equal(x['inputs'], y['inputs'])
  # Examples within a batch differ.
  assert len({x['inputs'].tobytes() for x in a}) > 1


@pytest.mark.parametrize('task', NAMES)
def test_to_sequence_loss_mask(task):
  n = 300 if task == 'passkey' else 9
  for ex in S.generate(task, length=n, num_examples=4, seed=0):
    for add_bos in (False, True):
      tokens, mask = S.to_sequence(ex, add_bos=add_bos)
      inp, tgt = ex['inputs'], ex['targets']
      off = int(add_bos)
      assert tokens.dtype == np.int32 and mask.dtype == np.bool_
      assert tokens.size == mask.size == off + inp.size + 1 + tgt.size
      if add_bos:
        assert tokens[0] == S.BOS
      assert tokens[off + inp.size] == S.SEP
      np.testing.assert_array_equal(tokens[off:off + inp.size], inp)
      # Mask True exactly where the NEXT token is an answer token.
      first = off + inp.size + 1
      expected = np.zeros(tokens.size, bool)
      expected[first - 1:tokens.size - 1] = True
      np.testing.assert_array_equal(mask, expected)
      assert mask.sum() == tgt.size and not mask[-1]
      np.testing.assert_array_equal(tokens[1:][mask[:-1]], tgt)


@pytest.mark.parametrize('depth', [0.0, 0.1, 0.25, 0.5, 0.77, 1.0])
@pytest.mark.parametrize('n', [400, 2000])
def test_passkey_depth_and_length(depth, n):
  filler = re.compile(r'The grass is green\. |The sky is blue\. |The sun is yellow\. '
                      r'|Here we go\. |There and back again\. ')
  for ex in S.generate('passkey', length=n, num_examples=3, seed=5, depth=depth):
    text = S.decode_bytes(ex['inputs'])
    assert n - 22 < len(text) <= n and ex['inputs'].size == len(text)
    assert text.endswith('What is the pass key? The pass key is ')
    key = S.decode_bytes(ex['targets'])
    assert re.fullmatch(r'\d{5}', key)
    at = text.index(f'The pass key is {key}.')
    before, total = len(filler.findall(text[:at])), len(filler.findall(text))
    assert total > 0 and abs(before - depth * total) <= 1


def test_passkey_default_depth_varies_and_bad_args():
  exs = S.generate('passkey', length=2000, num_examples=10, seed=0)
  positions = {S.decode_bytes(e['inputs']).index('The pass key is') for e in exs}
  assert len(positions) > 3
  with pytest.raises(ValueError):
    S.generate('passkey', length=S.TASKS['passkey'].min_length - 1, num_examples=1, seed=0)
  with pytest.raises(ValueError):
    S.generate('passkey', length=400, num_examples=1, seed=0, depth=1.5)


@pytest.mark.parametrize('n,num_queries', [(1, None), (8, None), (64, 4), (512, None), (5, 9)])
def test_associative_recall(n, num_queries):
  for ex in S.generate('associative_recall', length=n, num_examples=3, seed=2,
                       num_queries=num_queries):
    inp, tgt = ex['inputs'], ex['targets']
    q = int(np.flatnonzero(inp == S.QUERY)[0])
    keys, values, queries = inp[0:q:2], inp[1:q:2], inp[q + 1:]
    assert keys.size == values.size == n and len(set(keys.tolist())) == n
    m = n if num_queries is None else num_queries
    assert queries.size == tgt.size == m
    if m <= n:
      assert len(set(queries.tolist())) == m
    if num_queries is None:
      assert sorted(queries.tolist()) == sorted(keys.tolist())
    for k, v in zip(queries.tolist(), tgt.tolist()):
      assert v == values[keys.tolist().index(k)]
    # Keys and values use disjoint symbol ranges.
    assert (keys - S.SYMBOL_OFFSET < S.AR_NUM_KEYS).all()
    assert (values - S.SYMBOL_OFFSET >= S.AR_NUM_KEYS).all()
  with pytest.raises(ValueError):
    S.generate('associative_recall', length=S.AR_NUM_KEYS + 1, num_examples=1, seed=0)


def test_length_splits():
  from posjax.data.synthetic_splits import length_splits
  train, test = length_splits(40)
  assert list(train) == list(range(1, 41)) and list(test) == list(range(41, 401))
  train, test = length_splits(40, max_test_length=500)
  assert test[0] == 41 and test[-1] == 500
  with pytest.raises(ValueError):
    length_splits(0)


def test_unknown_task_and_min_length():
  with pytest.raises(ValueError):
    S.generate('nope', length=3, num_examples=1, seed=0)
  with pytest.raises(ValueError):
    S.generate('missing_duplicate_string', length=1, num_examples=1, seed=0)
  # Ruoss training lengths start at 1: every Delétang task except
  # missing_duplicate_string (min 2) supports n = 1.
  for t in ('reverse_string', 'duplicate_string', 'parity_check', 'binary_addition',
            'bucket_sort', 'modular_arithmetic', 'copy', 'associative_recall'):
    ex = S.generate(t, length=1, num_examples=2, seed=0)[0]
    np.testing.assert_array_equal(S.solve(t, ex['inputs']), ex['targets'])
