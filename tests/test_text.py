"""Language-modelling data: the local_text TFDS builder and its cache, packed LM
batches over any TFDS text split, length-extrapolation eval windows,
SentencePiece, and the errors for absent TFDS catalog datasets."""
import builtins
import errno
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from posjax import tasks
from posjax.data import build, builders, inputs, lm_pipelines, prepared, text


def _documents(corpus):
  """{relative path: [BOS] + bytes + [EOS]} of the corpus fixture."""
  out = {}
  for f in text.list_documents(corpus):
    with open(f, 'rb') as fh:
      out[os.path.relpath(f, corpus)] = np.concatenate(
          [[text.BOS], text.ByteTokenizer().encode(fh.read()), [text.EOS]])
  return out


@pytest.fixture(scope='module')
def built(corpus, tmp_path_factory):
  d = str(tmp_path_factory.mktemp('lt'))
  assert builders.build('local_text', data_dir=d, size='full', path=corpus) == 'local_text/full'
  return d, tfds.data_source('local_text/full', data_dir=d)


def _tokenize(ex):
  return text.ByteTokenizer().encode(ex['text'])


def test_local_text_holds_every_file_once_in_a_deterministic_split(corpus, built):
  _, src = built
  docs = _documents(corpus)
  seen = {}
  for split in ('train', 'validation'):
    for i in range(len(src[split])):
      ex = src[split][i]
      seen.setdefault(ex['path'].decode(), []).append(split)
      np.testing.assert_array_equal(np.concatenate([[text.BOS], _tokenize(ex), [text.EOS]]),
                                    docs[ex['path'].decode()])
  assert set(seen) == set(docs) and all(len(v) == 1 for v in seen.values())
  files = text.list_documents(corpus)
  want = {os.path.relpath(f, corpus) for f in text.split_documents(files, 'validation')}
  assert {p for p, s in seen.items() if s == ['validation']} == want
  assert 0 < len(want) < len(docs)


def test_local_text_cache_rebuilds_only_when_files_change(tmp_path, monkeypatch):
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'cache'))
  corpus = tmp_path / 'c'
  corpus.mkdir()
  for i in range(3):
    (corpus / f'{i}.txt').write_text(f'document {i} ' * 20)
  a = text.local_text_dir(str(corpus))
  stamp = os.path.getmtime(a)
  assert text.local_text_dir(str(corpus)) == a and os.path.getmtime(a) == stamp
  (corpus / '1.txt').write_text('changed ' * 30)
  b = text.local_text_dir(str(corpus))
  assert b != a
  src = tfds.data_source('local_text/full', data_dir=b)
  texts = [src[s][i]['text'] for s in src for i in range(len(src[s]))]
  assert ('changed ' * 30).encode() in texts
  assert not [p for p in os.listdir(os.path.dirname(a)) if '.tmp-' in p]


def test_lm_batches_pack_windows_of_documents_and_resume(corpus, built):
  _, src = built
  docs = list(_documents(corpus).values())
  it = lm_pipelines.lm_train(src['train'], tokenize=_tokenize, seq_len=32, batch_size=4, seed=0,
                          shuffle_window=8)
  b = next(it)
  seg, pos, x, y = b['segment_ids'], b['positions'], b['inputs'], b['targets']
  assert x.shape == (4, 32) and x.dtype == np.int32
  for r in range(4):
    for s in set(seg[r][seg[r] > 0]):
      m = seg[r] == s
      np.testing.assert_array_equal(pos[r][m], np.arange(m.sum()))  # Restart at 0.
      window = np.concatenate([x[r][m], y[r][m][-1:]])
      # Every packed window is a contiguous piece of one document, at a stride-32 offset.
      assert any(w.size >= window.size and
                 any(np.array_equal(w[o:o + window.size], window) for o in range(0, w.size, 32))
                 for w in docs)
  assert (x[seg == 0] == 0).all() and (pos[seg == 0] == 0).all()
  state = it.get_state()
  nxt = next(it)
  it.set_state(state)
  again = next(it)
  for k in nxt:
    np.testing.assert_array_equal(nxt[k], again[k])


def test_lm_process_shards_split_each_epoch_into_disjoint_documents(built):
  _, src = built
  n = len(src['train'])
  def epoch_documents(p):
    """The opening bytes of the first documents process p reads: its share of epoch 0."""
    it = lm_pipelines.lm_train(src['train'], tokenize=_tokenize, seq_len=4096, batch_size=1,
                            seed=3, process_index=p, process_count=2, shuffle_window=1)
    want, seen = len(range(p, n, 2)), []
    while len(seen) < want:
      b = next(it)
      x, seg, pos = b['inputs'][0], b['segment_ids'][0], b['positions'][0]
      starts = np.flatnonzero((pos == 0) & (seg > 0) & (x == text.BOS))
      seen += [x[i + 1:i + 40].tobytes() for i in starts]
    return set(seen[:want])
  a, b = epoch_documents(0), epoch_documents(1)
  assert not a & b
  assert a | b == {_tokenize(src['train'][i])[:39].tobytes() for i in range(n)}


def test_lm_eval_windows_are_fixed_and_split_across_processes(built):
  _, src = built
  kw = dict(tokenize=_tokenize, length=64, num_batches=2)
  one = lm_pipelines.lm_eval(src['validation'], batch_size=4, **kw)
  assert len(one) == 2 and one[0]['inputs'].shape == (4, 64)
  again = lm_pipelines.lm_eval(src['validation'], batch_size=4, **kw)
  np.testing.assert_array_equal(one[1]['inputs'], again[1]['inputs'])
  np.testing.assert_array_equal(one[0]['inputs'][:, 1:], one[0]['targets'][:, :-1])
  rows = np.concatenate([b['inputs'] for b in one])
  halves = [np.concatenate([b['inputs'] for b in lm_pipelines.lm_eval(
      src['validation'], batch_size=2, process_index=p, process_count=2, **kw)]) for p in (0, 1)]
  np.testing.assert_array_equal(np.sort(np.concatenate(halves), axis=0), np.sort(rows, axis=0))
  with pytest.raises(ValueError, match='^eval_lengths: '):
    lm_pipelines.lm_eval(src['validation'], tokenize=_tokenize, length=10**6, batch_size=1,
                      num_batches=1)


def test_lm_eval_span_scores_the_same_tokens_at_every_length(built):
  _, src = built
  kw = dict(tokenize=_tokenize, batch_size=2, num_batches=2, span=64)
  longest = lm_pipelines.lm_eval(src['validation'], length=64, **kw)
  short = lm_pipelines.lm_eval(src['validation'], length=16, **kw)
  assert short[0]['inputs'].shape == (8, 16)
  for key in ('inputs', 'targets'):  # The same tokens, in 16-token rows.
    np.testing.assert_array_equal(np.concatenate([b[key] for b in short]).reshape(-1),
                                  np.concatenate([b[key] for b in longest]).reshape(-1))
  np.testing.assert_array_equal(short[1]['positions'], np.tile(np.arange(16), (8, 1)))
  with pytest.raises(ValueError, match='^eval_lengths: 24 does not divide'):
    lm_pipelines.lm_eval(src['validation'], length=24, **kw)


def _lm_config(**data):
  return ml_collections.ConfigDict({'task': 'lm', 'data': {
      'name': 'local_text', 'path': '', 'data_dir': '', 'size': 'full', 'text_key': '',
      'eval_split': '', 'tokenizer': 'bytes', **data}})


def test_sentencepiece_tokenizer_trains_and_sets_the_lm_unit(corpus, built, tmp_path):
  d, src = built
  path = text.train_sentencepiece((src['train'][i]['text'] for i in range(len(src['train']))),
                                  str(tmp_path / 'spm'), vocab_size=40)
  tok = text.tokenizer(path)
  assert tok.vocab_size == tok.sp.get_piece_size() + text.SPECIALS
  ids = tok.encode(b'def x return')
  assert ids.min() >= text.SPECIALS and tok.decode(ids) == b'def x return'
  c = _lm_config(data_dir=d, tokenizer=path)
  it = tasks.for_config(ml_collections.ConfigDict(dict(
      c.to_dict(), seq_len=16, batch_size=2, seed=0))).train_iterator()
  assert next(it)['inputs'].max() < tok.vocab_size
  assert tasks.for_config(c).unit == 'token' and tasks.for_config(_lm_config()).unit == 'byte'
  with pytest.raises(ValueError, match=r'^data.tokenizer: .*allowed: bytes'):
    text.tokenizer(str(tmp_path / 'missing.model'))


class _Model:
  vocab_size, num_classes, max_len = 260, 2, 512
  encoding_class = type('Unbounded', (), {'bounded_by_max_len': False})


def _check(c):
  with c.unlocked():
    c.eval_lengths = (16,)
  tasks.for_config(c).check(_Model)


def test_any_tfds_text_dataset_and_catalog_errors(built, tmp_path):
  d, _ = built
  _check(_lm_config(data_dir=d))  # A TFDS text dataset in a data_dir.
  with pytest.raises(ValueError, match=r"^data.text_key: got 'body'; allowed: .*text"):
    _check(_lm_config(data_dir=d, text_key='body'))
  with pytest.raises(ValueError, match=r'^data.eval_split: '):
    _check(_lm_config(data_dir=d, eval_split='dev'))
  for name in ('lm1b', 'pg19', 'wiki40b/en', 'c4/en'):
    with pytest.raises(ValueError) as e:
      _check(_lm_config(name=name, data_dir=str(tmp_path)))
    msg = str(e.value)
    assert msg.startswith(f'data.name: no {name} under') and '\n' not in msg
    assert f'tfds build {name} --data_dir={tmp_path} --file_format=array_record' in msg
  assert inputs.text_key(_lm_config(name='pg19')) == 'book_text'


def _as_catalog(built_dir, data_dir, name, version):
  """Rewrites a local_text build as TFDS stores catalog dataset ``name``
  (``DIR/name/version/name-split.array_record-...``, a ``text`` feature)."""
  src = os.path.join(built_dir, 'local_text', 'full', '1.0.0')
  dst = os.path.join(data_dir, name, version)
  os.makedirs(dst)
  for f in os.listdir(src):
    data = open(os.path.join(src, f), 'rb').read()
    if f == 'dataset_info.json':
      info = json.loads(data)
      info.update(name=name, version=version, moduleName='tensorflow_datasets.datasets')
      info.pop('configName')
      data = json.dumps(info).encode()
    open(os.path.join(dst, f.replace('local_text', name)), 'wb').write(data)


def test_catalog_names_read_from_prepared_files_alone(built, tmp_path):
  """A catalog dataset is read from its prepared files (no builder code, no download)."""
  d, ref = built
  _as_catalog(d, str(tmp_path), 'lm1b', '1.1.0')
  c = _lm_config(name='lm1b', data_dir=str(tmp_path))
  _check(c)
  src = inputs.source(c)
  assert src['train'][0]['text'] == ref['train'][0]['text']
  it = tasks.for_config(ml_collections.ConfigDict(dict(
      c.to_dict(), seq_len=16, batch_size=2, seed=0))).train_iterator()
  assert next(it)['inputs'].shape == (2, 16)


def _entry_files(entry):
  return os.path.join(entry, 'local_text', 'full', '1.0.0')


def test_a_damaged_cache_entry_or_build_is_rebuilt_and_says_so(corpus, tmp_path, monkeypatch,
                                                               capsys):
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'cache'))
  c = _lm_config(path=corpus)
  entry = text.local_text_dir(corpus)
  d = _entry_files(entry)
  want = {s: [inputs.source(c)[s][i]['text'] for i in range(len(inputs.source(c)[s]))]
          for s in ('train', 'validation')}
  capsys.readouterr()
  shard = 'local_text-train.array_record-00000-of-00001'
  os.remove(os.path.join(d, shard))
  src = inputs.source(c)
  assert [src['train'][i]['text'] for i in range(len(src['train']))] == want['train']
  err = capsys.readouterr().err.splitlines()
  assert err[0] == f'local_text: cache entry {entry} is damaged ({shard} is missing); rebuilding it'
  assert len(err) == 2 and err[1].startswith('local_text: 40 files of')  # The build's line.
  with open(os.path.join(d, shard.replace('train', 'validation')), 'r+b') as f:
    f.truncate(10)  # A shard cut short (a full disk, a partial copy).
  src = inputs.source(c)
  assert [src['validation'][i]['text'] for i in range(len(src['validation']))] == want['validation']
  assert 'has 10 bytes, the build wrote' in capsys.readouterr().err
  assert os.listdir(os.path.dirname(entry)) == [os.path.basename(entry)]
  # A build in a data_dir (python -m posjax.data.build) is rebuilt the same way.
  builder = builders.make('local_text', data_dir=str(tmp_path / 'tfds'), size='tiny', path=corpus)
  prepared.prepare(builder)
  os.remove(os.path.join(builder.data_dir, shard))
  assert prepared.prepare(builder) == f'rebuilt ({shard} is missing)'
  assert prepared.prepare(builder) == 'reused (built with these inputs)'


def _deny_unreadable(monkeypatch):
  """Opening a file without read permission fails as it does for anyone but root (the
  tests run as root, whom the kernel lets read anything)."""
  real = builtins.open
  def guarded(file, *args, **kwargs):
    if isinstance(file, str) and os.path.isfile(file) and not os.stat(file).st_mode & 0o444:
      raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), file)
    return real(file, *args, **kwargs)
  monkeypatch.setattr(builtins, 'open', guarded)


def test_an_unreadable_corpus_file_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch,
                                                                         capsys):
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'cache'))
  corpus = tmp_path / 'c'
  corpus.mkdir()
  for i in range(3):
    (corpus / f'{i}.txt').write_text(f'document {i}')
  os.chmod(corpus / '1.txt', 0)
  _deny_unreadable(monkeypatch)
  with pytest.raises(ValueError) as e:
    text.local_text_dir(str(corpus))
  assert str(e.value) == (f'data.path: cannot read {corpus / "1.txt"} (Permission denied); '
                          'allowed: files you can read (check their permissions), or a path '
                          'without it')
  assert os.listdir(tmp_path / 'cache' / 'local_text') == []
  d = tmp_path / 'tfds'
  assert build.main(['build', 'local_text', f'--data_dir={d}', f'--path={corpus}']) == 2
  out, err = capsys.readouterr()
  assert err == f'error: {e.value}\n' and not out
  assert [p for p in d.rglob('*') if p.is_dir()] == []


def test_a_corpus_too_small_to_split_warns_at_the_build_and_at_every_read(
    corpus, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'cache'))
  one = tmp_path / 'one'
  one.mkdir()
  (one / 'only.txt').write_text('the only document')
  assert text.shared_split(text.list_documents(str(one))) == 'train'
  assert text.shared_split(text.list_documents(corpus)) is None  # 40 files: both splits.
  warning = (f'local_text/full: every file of {one} (1) hashes into train: training and '
             'evaluation use the same documents (add files to hold some out)')
  src = inputs.source(_lm_config(path=str(one)))
  assert src['train'][0]['text'] == src['validation'][0]['text'] == b'the only document'
  assert capsys.readouterr().err.splitlines()[0] == warning
  inputs.source(_lm_config(path=str(one)))  # Read from the cache: said again.
  assert capsys.readouterr().err.splitlines() == [warning]
