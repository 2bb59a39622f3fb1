"""Grain input pipelines over the generated TFDS datasets (posjax.data.pipelines)."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from posjax.data import listops, pipelines, synthetic


@pytest.fixture(scope='module')
def listops_src(data_dir):
  return tfds.data_source('listops/tiny', data_dir=data_dir)


@pytest.fixture(scope='module')
def reverse_src(data_dir):
  return tfds.data_source('reverse_string/tiny', data_dir=data_dir)


class Indexed:
  """A random-access source whose examples are their own index."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return {'i': int(i)}


def by_index(ex):
  return np.array([ex['i'] + 1], np.int32), ex['i']


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------ classification

def test_listops_batches_shapes_and_labels(listops_src):
  train = listops_src['train']
  label_of = {}
  for i in range(len(train)):
    tokens, label = pipelines.listops_example(train[i])
    assert label_of.setdefault(tokens.tobytes(), label) == label
  it = pipelines.classification_train(train, tokenize=pipelines.listops_example,
                                      max_length=128, batch_size=8, seed=0)
  for b in take(it, 8):  # One epoch.
    assert set(b) == {'inputs', 'label'}
    assert b['inputs'].shape == (8, 128) and b['inputs'].dtype == np.int32
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    for row, label in zip(b['inputs'], b['label']):
      n = int((row != listops.PAD).sum())
      assert (row[n:] == listops.PAD).all()  # Right-padded, nothing truncated.
      assert label_of[row[:n].tobytes()] == label


def test_cls_prepended_and_truncated(listops_src):
  train = listops_src['train']
  it = pipelines.classification_train(train, tokenize=pipelines.listops_example,
                                      max_length=12, batch_size=4, seed=0, cls_id=99)
  b = next(it)
  assert b['inputs'].shape == (4, 12) and (b['inputs'][:, 0] == 99).all()
  ev = pipelines.classification_eval(train, tokenize=pipelines.listops_example,
                                     max_length=12, batch_size=4, cls_id=99)
  tokens, _ = pipelines.listops_example(train[0])
  np.testing.assert_array_equal(ev[0]['inputs'][0], np.r_[99, tokens[:11]])


def test_pathfinder_tokens(data_dir):
  src = tfds.data_source('pathfinder32/tiny', data_dir=data_dir)['validation']
  ev = pipelines.classification_eval(src, tokenize=pipelines.pathfinder_example,
                                     max_length=32 * 32, batch_size=5)
  assert [b['inputs'].shape for b in ev] == [(5, 1024)] * 4
  assert [b['position_rows'].shape for b in ev] == [(5, 3, 1024)] * 4
  np.testing.assert_array_equal(ev[0]['position_rows'][2],
                                pipelines.image_position_rows(32, 32, 0, 1024))
  inputs = np.concatenate([b['inputs'] for b in ev])
  labels = np.concatenate([b['label'] for b in ev])
  for i in range(len(src)):
    image = src[i]['image']
    np.testing.assert_array_equal(inputs[i], image.reshape(-1).astype(np.int32) + 1)
    assert labels[i] == src[i]['label']
  assert inputs.min() >= 1 and inputs.max() < pipelines.PATHFINDER_VOCAB_SIZE


def test_eval_covers_split_once(listops_src):
  split = listops_src['validation']  # 16 examples.
  ev = pipelines.classification_eval(split, tokenize=pipelines.listops_example,
                                     max_length=128, batch_size=6)
  assert len(ev) == 3 and all(b['weight'].dtype == np.float32 for b in ev)
  assert sum(b['weight'].sum() for b in ev) == len(split)
  labels = np.concatenate([b['label'] for b in ev])[:len(split)]
  assert labels.tolist() == [split[i]['targets'] for i in range(len(split))]
  ev = pipelines.classification_eval(split, tokenize=pipelines.listops_example,
                                     max_length=128, batch_size=6, max_examples=7)
  assert sum(b['weight'].sum() for b in ev) == 7


def test_eval_shards_disjoint_and_cover():
  src = Indexed(23)
  seen, shapes = [], set()
  for p in range(2):
    ev = pipelines.classification_eval(src, tokenize=by_index, max_length=4,
                                       batch_size=5, process_index=p, process_count=2)
    shapes.add((len(ev), ev[0]['inputs'].shape))
    for b in ev:
      seen += b['label'][b['weight'] > 0].tolist()
  assert len(shapes) == 1  # Same number of batches on every process.
  assert sorted(seen) == list(range(23))


def test_train_shards_disjoint_and_cover():
  src = Indexed(64)
  per_process = []
  for p in range(2):
    it = pipelines.classification_train(src, tokenize=by_index, max_length=4,
                                        batch_size=4, seed=3, process_index=p,
                                        process_count=2)
    per_process.append([i for b in take(it, 8) for i in b['label'].tolist()])
  assert all(len(set(s)) == 32 for s in per_process)  # An epoch: no repeats.
  assert not set(per_process[0]) & set(per_process[1])
  assert set(per_process[0]) | set(per_process[1]) == set(range(64))


def test_train_seed_and_epochs():
  src = Indexed(32)
  def labels(seed, n=16):
    it = pipelines.classification_train(src, tokenize=by_index, max_length=4,
                                        batch_size=4, seed=seed)
    return np.concatenate([b['label'] for b in take(it, n)])
  a = labels(0)
  np.testing.assert_array_equal(a, labels(0))
  assert not np.array_equal(a, labels(1))
  assert sorted(a[:32]) == list(range(32)) and sorted(a[32:]) == list(range(32))
  assert not np.array_equal(a[:32], a[32:])  # Reshuffled every epoch.


def test_classification_restore(listops_src):
  def make():
    return pipelines.classification_train(
        listops_src['train'], tokenize=pipelines.listops_example, max_length=128,
        batch_size=8, seed=0)
  it = make()
  take(it, 11)  # Past the first epoch.
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 3)
  fresh = make()
  fresh.set_state(state)
  assert_same(take(fresh, 3), expected)


# ------------------------------------------------------- synthetic sequences

def check_packed(b, by_x):
  """Every segment is one whole example; positions restart; weights exact."""
  for r in range(b['inputs'].shape[0]):
    seg = b['segment_ids'][r]
    assert (b['weights'][r][seg == 0] == 0).all()
    assert (b['inputs'][r][seg == 0] == 0).all()
    ids = [s for s in np.unique(seg) if s]
    assert ids == list(range(1, len(ids) + 1))
    for s in ids:
      where = np.flatnonzero(seg == s)
      assert (np.diff(where) == 1).all()  # Contiguous.
      x = b['inputs'][r][where]
      y, w = by_x[x.tobytes()]  # KeyError: not a whole example.
      np.testing.assert_array_equal(b['targets'][r][where], y)
      np.testing.assert_array_equal(b['weights'][r][where], w)
      np.testing.assert_array_equal(b['positions'][r][where], np.arange(where.size))
      # Weights are 1 exactly from SEP (predicts the first answer token) on.
      sep = int(np.flatnonzero(x == synthetic.SEP)[0])
      np.testing.assert_array_equal(w, (np.arange(x.size) >= sep).astype(np.float32))


def sequences(split):
  by_x = {}
  for i in range(len(split)):
    tokens, mask = synthetic.to_sequence(split[i])
    by_x[tokens[:-1].tobytes()] = (tokens[1:], mask[:-1].astype(np.float32))
  return by_x


def test_sequence_train_packs_whole_examples(reverse_src):
  train = reverse_src['train']
  by_x = sequences(train)
  it = pipelines.sequence_train(train, max_length=40, batch_size=4, seed=0)
  batches = take(it, 6)
  for b in batches:
    assert b.keys() == {'inputs', 'targets', 'segment_ids', 'positions', 'weights'}
    for k, v in b.items():
      assert v.shape == (4, 40)
      assert v.dtype == (np.float32 if k == 'weights' else np.int32)
    check_packed(b, by_x)
  assert max(b['segment_ids'].max() for b in batches) > 1  # Actually packs.
  # Too-long examples are skipped, not truncated (x has 2n tokens for length n).
  it = pipelines.sequence_train(train, max_length=7, batch_size=2, seed=0)
  for b in take(it, 4):
    check_packed(b, by_x)


def test_sequence_train_raises_when_nothing_fits(reverse_src):
  it = pipelines.sequence_train(reverse_src['train'], max_length=1, batch_size=2, seed=0)
  with pytest.raises(ValueError, match='skipped'):
    next(it)


def test_sequence_train_seed_and_restore(reverse_src):
  train = reverse_src['train']
  def make(seed=0):
    return pipelines.sequence_train(train, max_length=40, batch_size=4, seed=seed)
  assert_same(take(make(), 3), take(make(), 3))
  assert not np.array_equal(next(make())['inputs'], next(make(1))['inputs'])
  it = make()
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 3)
  fresh = make()
  fresh.set_state(state)
  assert_same(take(fresh, 3), expected)


def test_sequence_train_shards_disjoint():
  # Example i has the single input symbol i, so a segment names its example.
  class Source(Indexed):
    def __getitem__(self, i):
      ex = super().__getitem__(i)['i']
      return {'inputs': synthetic.sym([ex]), 'targets': synthetic.sym([ex, ex]), 'length': 1}
  src = Source(64)
  by_x = sequences(src)
  seen = []
  for p in range(2):
    it = pipelines.sequence_train(src, max_length=12, batch_size=2, seed=0,
                                  process_index=p, process_count=2)
    ids = []
    for b in take(it, 2):  # At most 2 * 2 * 3 = 12 of the shard's 32 examples.
      check_packed(b, by_x)
      starts = (b['positions'] == 0) & (b['segment_ids'] > 0)
      ids += (b['inputs'][starts] - synthetic.SYMBOL_OFFSET).tolist()
    assert len(ids) == len(set(ids)) >= 8
    seen.append(set(ids))
  assert not seen[0] & seen[1]


def test_sequence_eval_groups_by_length(reverse_src):
  test = reverse_src['test']
  by_x = sequences(test)
  lengths = sorted({int(test[i]['length']) for i in range(len(test))})
  counts = {n: sum(int(test[i]['length']) == n for i in range(len(test))) for n in lengths}
  total = {n: 0 for n in lengths}
  for p in range(2):
    ev = pipelines.sequence_eval(test, batch_size=3, process_index=p, process_count=2)
    assert sorted(ev) == lengths
    for n, batches in ev.items():
      assert len(batches) == 1  # 4 per length, 2 per process.
      for b in batches:
        assert b['inputs'].shape == (3, 2 * n)  # x = n inputs + SEP + n - 1 targets.
        assert b['example_weight'].dtype == np.float32
        total[n] += b['example_weight'].sum()
        real = b['example_weight'] > 0
        assert (b['weights'][~real] == 0).all()
        check_packed({k: v[real] for k, v in b.items() if k != 'example_weight'}, by_x)
        assert (b['segment_ids'][real] == 1).all()  # One example per row.
  assert total == counts
  ev = pipelines.sequence_eval(test, batch_size=8, max_examples_per_length=1)
  assert all(b[0]['example_weight'].sum() == 1 for b in ev.values())
  ev = pipelines.sequence_eval(test, batch_size=8, width_multiple=32)
  widths = {n: bs[0]['inputs'].shape[1] for n, bs in ev.items()}
  assert all(w % 32 == 0 and 2 * n <= w < 2 * n + 32 for n, w in widths.items())
  assert len(set(widths.values())) < len(widths)  # Fewer shapes than lengths.


def _qwen2_vl_rope_index(text_before: int, t: int, h: int, w: int, text_after: int):
  """Qwen2-VL's ``get_rope_index`` for one image between two text spans,
  transcribed loop by loop from the paper's description (Wang et al. 2024, sec. 2.1)."""
  out = [[j, j, j] for j in range(text_before)]
  start = text_before
  out += [[start + ti, start + hi, start + wi]
          for ti in range(t) for hi in range(h) for wi in range(w)]
  nxt = max(max(p) for p in out) + 1
  out += [[nxt + j] * 3 for j in range(text_after)]
  return np.array(out).T


@pytest.mark.parametrize('before,h,w,after', [(1, 2, 3, 4), (0, 5, 2, 0), (3, 1, 1, 2), (2, 4, 4, 0)])
def test_image_position_rows_are_qwen2_vl_rope_index(before, h, w, after):
  length = before + h * w + after
  np.testing.assert_array_equal(pipelines.image_position_rows(h, w, before, length),
                                _qwen2_vl_rope_index(before, 1, h, w, after))
  # Truncation keeps the first ``length`` columns.
  np.testing.assert_array_equal(pipelines.image_position_rows(h, w, before, length - 1),
                                _qwen2_vl_rope_index(before, 1, h, w, after)[:, :-1])
