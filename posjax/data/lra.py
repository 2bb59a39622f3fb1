"""Long Range Arena datasets converted from files the user downloads (``manual_dir``),
and the tokenizers that turn their examples into model inputs.

Built by ``python -m posjax.data.build NAME --data_dir=DIR --manual_dir=M
[--size=tiny|small|full]`` (``posjax.data.builders``); ``full`` is every
example, ``small`` / ``tiny`` the first ``LIMITS[size]`` of each split in the
order given below (deterministic).

``lra_text``: IMDB reviews (LRA Text; LRA reads TFDS ``imdb_reviews``).
  ``M`` holds ``aclImdb_v1.tar.gz`` or the extracted ``aclImdb/``. Features
  ``text`` (the file's bytes, stripped of surrounding whitespace, as TFDS does)
  and ``label`` (``neg`` = 0, ``pos`` = 1). Splits ``train`` / ``test``, 25,000
  each; there is no validation split: LRA evaluates on ``test``
  (``lra_benchmarks/text_classification/input_pipeline.py``). Order: review id,
  then neg before pos (so a prefix is balanced).

``lra_retrieval``: AAN citation pairs (LRA Retrieval). ``M`` holds
  ``new_aan_pairs.{train,eval,test}.tsv`` from the LRA release, directly or in
  ``tsv_data/``, ``lra_release/tsv_data/`` or ``lra_release/lra_release/tsv_data/``.
  Rows are tab-separated ``label, id1, id2, text1, text2`` with no header and no
  quoting (``lra_benchmarks/matching/input_pipeline.py``); ``text1`` / ``text2``
  are kept byte for byte, exactly the strings LRA's byte-level model reads.
  Splits ``train`` / ``validation`` (``.eval.tsv``) / ``test``, in file order.

``lra_image``: CIFAR-10 in grey (LRA Image). ``M`` holds
  ``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/`` (pickled
  dicts with ``b'data'``: uint8 ``[10000, 3072]``, each row the red, green and
  blue 32x32 planes, and ``b'labels'``). ``image`` is ``grayscale(rgb)``, uint8
  ``[32, 32, 1]``; ``label`` 0-9. Like LRA (``train[:90%]`` / ``train[90%:]`` of
  TFDS ``cifar10``), ``train`` is the first 90% of ``data_batch_1..5`` (45,000)
  and ``validation`` the last 10% (5,000); ``test`` is ``test_batch``. (TFDS
  stores CIFAR in its own order, so LRA's 5,000 are other images.)
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import re
import tarfile
from typing import Callable, Iterable, Iterator

import numpy as np

from posjax.data import pipelines

LIMITS = {'tiny': 32, 'small': 4000, 'full': None}  # Examples per split.
TEXT_OFFSET = 1  # token = byte + 1, so PAD (0) is never a byte
TEXT_VOCAB_SIZE = 256 + TEXT_OFFSET  # 257

IMDB_URL = 'https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz'
CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
LRA_URL = 'https://storage.googleapis.com/long-range-arena/lra_release.gz'
CIFAR_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                 'ship', 'truck')


# ------------------------------------------------------------ tokenizers

def _byte_tokens(text) -> np.ndarray:
  data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
  return np.frombuffer(data, np.uint8).astype(np.int32) + TEXT_OFFSET


def text_example(ex: dict) -> tuple[np.ndarray, int]:
  """LRA Text: the review's UTF-8 bytes as ``byte + 1`` (untruncated)."""
  return _byte_tokens(ex['text']), int(ex['label'])


def retrieval_example(ex: dict) -> tuple[np.ndarray, np.ndarray, int]:
  """LRA Retrieval: both documents' bytes as ``byte + 1`` (untruncated)."""
  return _byte_tokens(ex['text1']), _byte_tokens(ex['text2']), int(ex['label'])


# LRA Image: the 32 x 32 grey pixels as ``pixel + 1``, exactly Pathfinder's.
image_example = pipelines.pathfinder_example


def grayscale(rgb: np.ndarray) -> np.ndarray:
  """``tf.image.rgb_to_grayscale`` of uint8 ``[..., 3]`` -> uint8 ``[..., 1]``.

  TF's arithmetic in float32: ``x = rgb * float32(1/255)``, ``g = 0.2989 r +
  0.5870 g + 0.1140 b``, then ``uint8(g * 255.5)`` truncated. Checked equal to
  TF 2.17's ``rgb_to_grayscale`` for all 2^24 colours; float64 arithmetic would
  differ (by one) on 237 of them.
  """
  x = np.asarray(rgb, np.uint8).astype(np.float32) * np.float32(1 / 255)
  w = np.array([0.2989, 0.5870, 0.1140], np.float32)
  grey = x[..., 0] * w[0] + x[..., 1] * w[1] + x[..., 2] * w[2]
  return (grey * np.float32(255.5)).astype(np.uint8)[..., None]


# ------------------------------------------------------- reading sources

@dataclasses.dataclass(frozen=True)
class _Download:
  """A download that is a ``.tar.gz`` of one top directory, read either way."""
  top: str
  archive: str
  url: str

  def locate(self, manual_dir: str | None) -> str:
    """The extracted directory or the archive under ``manual_dir``."""
    root = os.path.expanduser(manual_dir or '')
    for path in (os.path.join(root, self.top), os.path.join(root, self.archive)):
      if manual_dir and os.path.exists(path):
        return path
    raise _missing(manual_dir, f'{self.top}/ or {self.archive}',
                   f'download {self.url} into it (extracting is optional)')

  def files(self, path: str, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """``(name, contents)`` of the files whose name (``top/...``) passes ``keep``."""
    if os.path.isdir(path):
      for root, dirs, names in os.walk(path):
        dirs.sort()
        for n in sorted(names):
          name = '/'.join([self.top, *os.path.relpath(os.path.join(root, n), path).split(os.sep)])
          if keep(name):
            with open(os.path.join(root, n), 'rb') as f:
              yield name, f.read()
      return
    with tarfile.open(path, 'r:*') as tar:
      for member in tar:
        name = member.name.removeprefix('./')
        if member.isfile() and keep(name):
          yield name, tar.extractfile(member).read()


IMDB = _Download('aclImdb', 'aclImdb_v1.tar.gz', IMDB_URL)
CIFAR = _Download('cifar-10-batches-py', 'cifar-10-python.tar.gz', CIFAR_URL)


def _missing(manual_dir: str | None, what: str, how: str) -> ValueError:
  where = f'under {manual_dir!r}' if manual_dir else 'given (set --manual_dir)'
  return ValueError(f'manual_dir: no {what} {where}; {how}')


def _first(examples: Iterable, size: str) -> Iterator:
  limit = LIMITS[size]
  for i, ex in enumerate(examples):
    if limit is not None and i >= limit:
      return
    yield ex


# ---------------------------------------------------------------- IMDB

def imdb_splits(size: str, manual_dir: str | None) -> dict[str, Iterator]:
  path = IMDB.locate(manual_dir)
  def gen(split: str):
    pattern = re.compile(rf'aclImdb/{split}/(neg|pos)/(\d+)_\d+\.txt$')
    reviews = []
    for name, data in IMDB.files(path, pattern.match):
      label, review_id = pattern.match(name).groups()
      reviews.append(((int(review_id), label), name, data))
    if not reviews:
      raise ValueError(f'manual_dir: {path} has no aclImdb/{split}/pos or neg/*.txt reviews; '
                       f'download {IMDB_URL}')
    for _, name, data in _first(sorted(reviews), size):
      yield name, {'text': data.strip(), 'label': name.split('/')[2]}
  return {'train': gen('train'), 'test': gen('test')}


# ------------------------------------------------------------- CIFAR-10

_CIFAR_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6)) + ('test_batch',)
# What the pickled CIFAR batches may reference: numpy arrays (written by
# Python 2 / numpy 1, or by Python 3 / numpy 2) and bytes.
_PICKLE_GLOBALS = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
                   ('numpy.core.multiarray', '_reconstruct'),
                   ('numpy._core.multiarray', '_reconstruct'),
                   ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer')}


class _Unpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _PICKLE_GLOBALS:
      raise ValueError(f'manual_dir: a CIFAR batch references {module}.{name}; '
                       f'allowed: numpy arrays (use the files from {CIFAR_URL})')
    return super().find_class(module, name)


def _cifar_batch(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
  batch = _Unpickler(io.BytesIO(data), encoding='bytes').load()
  pixels, labels = np.asarray(batch[b'data'], np.uint8), np.asarray(batch[b'labels'], np.int64)
  if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(labels) != len(pixels):
    raise ValueError(f"manual_dir: {name}: b'data' {pixels.shape} with {len(labels)} labels; "
                     "need [N, 3072] and N labels")
  rgb = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return grayscale(rgb), labels


def cifar_splits(size: str, manual_dir: str | None) -> dict[str, Iterator]:
  path = CIFAR.locate(manual_dir)

  @functools.cache
  def batches() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    wanted = {f'{CIFAR.top}/{b}' for b in _CIFAR_BATCHES}
    found = {name.split('/')[-1]: _cifar_batch(name, data)
             for name, data in CIFAR.files(path, wanted.__contains__)}
    missing = [b for b in _CIFAR_BATCHES if b not in found]
    if missing:
      raise ValueError(f'manual_dir: {path} lacks {", ".join(missing)}; download {CIFAR_URL}')
    return found

  def gen(split: str):
    names = ['test_batch'] if split == 'test' else list(_CIFAR_BATCHES[:-1])
    images = np.concatenate([batches()[b][0] for b in names])
    labels = np.concatenate([batches()[b][1] for b in names])
    keys = [f'{b}_{i}' for b in names for i in range(len(batches()[b][1]))]
    cut = len(images) - len(images) // 10  # LRA: train[:90%] / train[90%:].
    rows = {'train': range(cut), 'validation': range(cut, len(images)),
            'test': range(len(images))}[split]
    for i in _first(rows, size):
      yield keys[i], {'image': images[i], 'label': int(labels[i])}
  return {s: gen(s) for s in ('train', 'validation', 'test')}


# ------------------------------------------------------------------ AAN

AAN_FILES = {'train': 'new_aan_pairs.train.tsv', 'validation': 'new_aan_pairs.eval.tsv',
             'test': 'new_aan_pairs.test.tsv'}
_AAN_DIRS = ('', 'tsv_data', 'lra_release/tsv_data', 'lra_release/lra_release/tsv_data')


def _aan_dir(manual_dir: str | None) -> str:
  for sub in _AAN_DIRS:
    d = os.path.join(os.path.expanduser(manual_dir or ''), sub)
    if manual_dir and all(os.path.isfile(os.path.join(d, f)) for f in AAN_FILES.values()):
      return d
  raise _missing(manual_dir, 'new_aan_pairs.{train,eval,test}.tsv (nor in '
                 + ', '.join(s + '/' for s in _AAN_DIRS[1:]) + ')',
                 f"download {LRA_URL} and extract them: tar xzf lra_release.gz "
                 "--wildcards '*new_aan_pairs*'")


def _aan_rows(path: str) -> Iterator[tuple[str, dict]]:
  with open(path, 'rb') as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip(b'\r\n')
      if not line:
        continue
      fields = line.split(b'\t')
      label = fields[0].decode('ascii', 'replace').strip()
      try:
        value = float(label)  # LRA parses the label as a float.
      except ValueError:
        value = None
      if len(fields) != 5 or value not in (0.0, 1.0):
        raise ValueError(f'manual_dir: {path} line {n}: need 5 tab-separated fields (label 0 '
                         f'or 1, id1, id2, text1, text2); got {len(fields)}, label {label[:20]!r}')
      yield str(n), {'text1': fields[3], 'text2': fields[4], 'label': int(value)}


def aan_splits(size: str, manual_dir: str | None) -> dict[str, Iterator]:
  d = _aan_dir(manual_dir)
  return {split: _first(_aan_rows(os.path.join(d, f)), size) for split, f in AAN_FILES.items()}
