"""LRA Text / Retrieval / Image build from fake downloads in their real on-disk
formats and read back with tfds.data_source; tokenizers; missing-file errors."""
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from posjax.data import builders, lra

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = lra.LIMITS['tiny']


def _read(data_dir: str, name: str) -> dict[str, list[dict]]:
  src = tfds.data_source(f'{name}/tiny', data_dir=data_dir)
  return {split: [src[split][i] for i in range(len(src[split]))] for split in src}


# ------------------------------------------------------------------ IMDB

def _review(split: str, label: str, i: int) -> bytes:
  return f'\n  {split} {label} review {i}: caf\u00e9 <br /><br />fin.\t \n'.encode()


def _write_imdb(root: str) -> None:
  """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt, 20 per class, plus files
  the builder must skip (unsup reviews, url lists)."""
  for split in ('train', 'test'):
    for label in ('neg', 'pos'):
      d = os.path.join(root, 'aclImdb', split, label)
      os.makedirs(d)
      for i in range(20):
        rating = 2 + i % 3 if label == 'neg' else 7 + i % 4
        with open(os.path.join(d, f'{i}_{rating}.txt'), 'wb') as f:
          f.write(_review(split, label, i))
    with open(os.path.join(root, 'aclImdb', split, 'urls_pos.txt'), 'w') as f:
      f.write('http://www.imdb.com/title/tt0453418/usercomments\n')
  os.makedirs(os.path.join(root, 'aclImdb', 'train', 'unsup'))
  with open(os.path.join(root, 'aclImdb', 'train', 'unsup', '0_0.txt'), 'w') as f:
    f.write('unlabelled')


@pytest.fixture(scope='module')
def imdb(tmp_path_factory):
  """The same reviews built from the extracted directory and from the tarball."""
  extracted = str(tmp_path_factory.mktemp('imdb_dir'))
  _write_imdb(extracted)
  packed = str(tmp_path_factory.mktemp('imdb_tar'))
  with tarfile.open(os.path.join(packed, 'aclImdb_v1.tar.gz'), 'w:gz') as tar:
    tar.add(os.path.join(extracted, 'aclImdb'), arcname='aclImdb')
  out = {}
  for kind, manual_dir in (('dir', extracted), ('tar', packed)):
    data_dir = str(tmp_path_factory.mktemp(f'tfds_imdb_{kind}'))
    assert builders.build('lra_text', data_dir=data_dir, manual_dir=manual_dir) == 'lra_text/tiny'
    out[kind] = _read(data_dir, 'lra_text')
  return out


def test_text_is_the_first_reviews_by_id_both_labels(imdb):
  rows = imdb['dir']
  assert set(rows) == {'train', 'test'}  # LRA evaluates on test; no validation split.
  for split in ('train', 'test'):
    got = sorted((ex['text'], int(ex['label'])) for ex in rows[split])
    want = sorted((_review(split, label, i).strip(), int(label == 'pos'))
                  for i in range(TINY // 2) for label in ('neg', 'pos'))
    assert got == want


def test_text_from_tarball_equals_text_from_directory(imdb):
  for split in ('train', 'test'):
    key = lambda ex: (ex['text'], int(ex['label']))
    assert sorted(map(key, imdb['tar'][split])) == sorted(map(key, imdb['dir'][split]))


def test_text_tokens_are_utf8_bytes_plus_one(imdb):
  ex = imdb['dir']['train'][0]
  tokens, label = lra.text_example(ex)
  assert tokens.dtype == np.int32 and label == int(ex['label'])
  assert bytes((tokens - 1).astype(np.uint8).tolist()) == ex['text']
  tokens, _ = lra.text_example({'text': 'a\u00e9', 'label': 1})
  np.testing.assert_array_equal(tokens, [ord('a') + 1, 0xC3 + 1, 0xA9 + 1])
  assert tokens.min() >= 1 and tokens.max() < lra.TEXT_VOCAB_SIZE == 257


# ------------------------------------------------------------- CIFAR-10

def _batch(seed: int, n: int) -> dict:
  rng = np.random.default_rng(seed)
  return {b'batch_label': f'batch {seed}'.encode(), b'labels': rng.integers(0, 10, n).tolist(),
          b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
          b'filenames': [f'img_{seed}_{i}.png'.encode() for i in range(n)]}


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  """cifar-10-python.tar.gz of pickled batches (8 images each): 40 train, 8 test."""
  raw = str(tmp_path_factory.mktemp('cifar_raw'))
  batches = {f'data_batch_{i}': _batch(i, 8) for i in range(1, 6)}
  batches['test_batch'] = _batch(0, 8)
  os.makedirs(os.path.join(raw, 'cifar-10-batches-py'))
  for name, batch in batches.items():
    with open(os.path.join(raw, 'cifar-10-batches-py', name), 'wb') as f:
      pickle.dump(batch, f, protocol=2)
  manual_dir = str(tmp_path_factory.mktemp('cifar_manual'))
  with tarfile.open(os.path.join(manual_dir, 'cifar-10-python.tar.gz'), 'w:gz') as tar:
    tar.add(os.path.join(raw, 'cifar-10-batches-py'), arcname='cifar-10-batches-py')
  data_dir = str(tmp_path_factory.mktemp('tfds_cifar'))
  builders.build('lra_image', data_dir=data_dir, manual_dir=manual_dir)
  return batches, _read(data_dir, 'lra_image'), os.path.join(raw)


def _planes(batch: dict) -> np.ndarray:
  """[N, 32, 32, 3]: each row of b'data' is the red, green, blue 32x32 planes."""
  d = batch[b'data'].astype(np.float64)
  return np.stack([d[:, c * 1024:(c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)], -1)


def _grey64(r, g, b) -> np.ndarray:
  """The luma formula in float64: TF's float32 result is this or one more."""
  return np.floor((0.2989 * r + 0.5870 * g + 0.1140 * b) / 255 * 255.5)


def test_image_splits_are_lra_90_10_of_train_and_test(cifar):
  batches, rows, _ = cifar
  assert [len(rows[s]) for s in ('train', 'validation', 'test')] == [min(36, TINY), 4, 8]
  train = [batches[f'data_batch_{i}'] for i in range(1, 6)]
  rgb = np.concatenate([_planes(b) for b in train])
  labels = np.concatenate([b[b'labels'] for b in train])
  expect = {'train': range(min(36, TINY)), 'validation': range(36, 40)}
  for split, idx in expect.items():
    got = sorted((ex['image'].tobytes(), int(ex['label'])) for ex in rows[split])
    want = sorted((lra.grayscale(rgb[i].astype(np.uint8)).tobytes(), int(labels[i])) for i in idx)
    assert got == want, split
  test = _planes(batches['test_batch'])
  got = sorted((ex['image'].tobytes(), int(ex['label'])) for ex in rows['test'])
  assert got == sorted((lra.grayscale(test[i].astype(np.uint8)).tobytes(),
                        batches['test_batch'][b'labels'][i]) for i in range(8))


def test_image_is_grey_of_the_rgb_planes(cifar):
  batches, rows, _ = cifar
  grey = {lra.grayscale(rgb.astype(np.uint8)).tobytes(): _grey64(*np.moveaxis(rgb, -1, 0))
          for rgb in _planes(batches['test_batch'])}
  for ex in rows['test']:
    assert ex['image'].shape == (32, 32, 1) and ex['image'].dtype == np.uint8
    diff = ex['image'][..., 0].astype(np.float64) - grey[ex['image'].tobytes()]
    assert set(np.unique(diff)) <= {0.0, 1.0} and (diff == 0).mean() > 0.99


def test_grayscale_is_tf_rgb_to_grayscale_on_every_colour():
  v = np.arange(256)
  ours = lra.grayscale(np.stack(np.meshgrid(v, v, v, indexing='ij'), -1).astype(np.uint8))[..., 0]
  diff = ours - _grey64(v[:, None, None], v[None, :, None], v[None, None, :])
  # TF's float32 arithmetic lands one above the float64 floor on exactly 237
  # colours (counted with tf.image.rgb_to_grayscale, TF 2.17, on all 2^24).
  assert set(np.unique(diff)) == {0, 1} and int((diff == 1).sum()) == 237
  # Values tf.image.rgb_to_grayscale gave (TF 2.17), several where float64 differs.
  tf_values = {(0, 122, 186): 93, (46, 227, 15): 149, (115, 128, 160): 128,
               (204, 195, 212): 200, (254, 12, 209): 107, (255, 255, 255): 255,
               (128, 128, 128): 128, (255, 0, 0): 76, (0, 255, 0): 149, (0, 0, 255): 29}
  for (r, g, b), want in tf_values.items():
    assert ours[r, g, b] == want, (r, g, b)


def test_image_tokens_are_pixels_plus_one_row_major(cifar):
  ex = cifar[1]['test'][0]
  tokens, label = lra.image_example(ex)
  assert tokens.dtype == np.int32 and tokens.shape == (32, 32) and label == int(ex['label'])
  np.testing.assert_array_equal(tokens, ex['image'][..., 0].astype(np.int32) + 1)


def test_image_missing_batch_and_foreign_pickle_are_one_line_errors(cifar, tmp_path):
  raw = cifar[2]
  os.rename(os.path.join(raw, 'cifar-10-batches-py', 'data_batch_3'), tmp_path / 'moved')
  with pytest.raises(ValueError, match=r'^manual_dir: .* lacks data_batch_3; download https://'):
    next(lra.cifar_splits('tiny', raw)['train'])
  with open(os.path.join(raw, 'cifar-10-batches-py', 'data_batch_3'), 'wb') as f:
    pickle.dump({b'data': os.system, b'labels': []}, f, protocol=2)
  with pytest.raises(ValueError, match=r'^manual_dir: a CIFAR batch references \w+\.system; allowed'):
    next(lra.cifar_splits('tiny', raw)['train'])


# ------------------------------------------------------------------ AAN

def _aan_row(split: str, i: int) -> tuple[bytes, bytes, int]:
  # As in the LRA files: text fields are Python bytes literals, escapes included.
  text1 = f"b'{split} paper {i} \\xc3\\xa9\\n cites'".encode()
  text2 = f"b'other paper {i}\\n'".encode()
  return text1, text2, i % 2


@pytest.fixture(scope='module')
def aan(tmp_path_factory):
  """new_aan_pairs.*.tsv where the LRA release extracts them (no header, no quoting)."""
  manual_dir = str(tmp_path_factory.mktemp('aan'))
  tsv = os.path.join(manual_dir, 'lra_release', 'lra_release', 'tsv_data')
  os.makedirs(tsv)
  counts = {'train': 40, 'eval': 5, 'test': 6}
  for split, n in counts.items():
    with open(os.path.join(tsv, f'new_aan_pairs.{split}.tsv'), 'wb') as f:
      for i in range(n):
        t1, t2, label = _aan_row(split, i)
        label_text = str(label).encode() if i % 3 else [b'0.0', b'1.0'][label]  # LRA: floats.
        f.write(b'\t'.join([label_text,
                            f'W{i:02d}-1001'.encode(), f'P{i:02d}-2002'.encode(), t1, t2]) + b'\n')
  data_dir = str(tmp_path_factory.mktemp('tfds_aan'))
  builders.build('lra_retrieval', data_dir=data_dir, manual_dir=manual_dir)
  return counts, _read(data_dir, 'lra_retrieval'), tsv


def test_retrieval_keeps_columns_byte_for_byte(aan):
  counts, rows, _ = aan
  for split, file_split in (('train', 'train'), ('validation', 'eval'), ('test', 'test')):
    got = sorted((ex['text1'], ex['text2'], int(ex['label'])) for ex in rows[split])
    assert got == sorted(_aan_row(file_split, i) for i in range(min(counts[file_split], TINY)))
  assert {int(ex['label']) for ex in rows['train']} == {0, 1}


def test_retrieval_tokens_are_bytes_plus_one(aan):
  ex = aan[1]['validation'][0]
  tokens1, tokens2, label = lra.retrieval_example(ex)
  assert tokens1.dtype == tokens2.dtype == np.int32 and label == int(ex['label'])
  assert bytes((tokens1 - 1).astype(np.uint8).tolist()) == ex['text1']
  assert bytes((tokens2 - 1).astype(np.uint8).tolist()) == ex['text2']


def test_retrieval_bad_row_names_file_and_line(aan, tmp_path):
  for f in lra.AAN_FILES.values():
    with open(os.path.join(aan[2], f), 'rb') as src, open(tmp_path / f, 'wb') as dst:
      dst.write(src.read())
  with open(tmp_path / 'new_aan_pairs.eval.tsv', 'ab') as f:
    f.write(b'1\tW1\tP1\tonly four fields\n')
  with pytest.raises(ValueError, match=r'^manual_dir: .*eval\.tsv line 6: need 5 tab-separated'):
    list(lra.aan_splits('full', str(tmp_path))['validation'])


# ------------------------------------------------------- missing files

@pytest.mark.parametrize('name, expected, url', [
    ('lra_text', 'aclImdb/ or aclImdb_v1.tar.gz', lra.IMDB_URL),
    ('lra_image', 'cifar-10-batches-py/ or cifar-10-python.tar.gz', lra.CIFAR_URL),
    ('lra_retrieval', 'new_aan_pairs.{train,eval,test}.tsv', lra.LRA_URL)])
def test_missing_manual_files_are_one_line_errors(tmp_path, name, expected, url):
  for manual_dir, where in ((str(tmp_path), f'under {str(tmp_path)!r}'),
                            (None, 'given (set --manual_dir)')):
    with pytest.raises(ValueError) as e:
      builders.build(name, data_dir=str(tmp_path / 'tfds'), manual_dir=manual_dir)
    msg = str(e.value)
    assert msg.startswith(f'manual_dir: no {expected}') and where in msg, msg
    assert url in msg and '\n' not in msg


def test_cli_missing_manual_dir_exits_2_with_one_line(tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT}
  run = subprocess.run([sys.executable, '-m', 'posjax.data.build', 'lra_retrieval',
                        f'--data_dir={tmp_path / "tfds"}', f'--manual_dir={tmp_path}'],
                       capture_output=True, text=True, env=env)
  err = run.stderr.strip()
  assert run.returncode == 2, run.stderr[-2000:]
  assert err.startswith('error: manual_dir: no new_aan_pairs.{train,eval,test}.tsv')
  assert f"under '{tmp_path}'" in err and lra.LRA_URL in err and '\n' not in err
