"""Text for language modelling: tokenizers and the ``local_text`` dataset.

Token ids: 0 = PAD, 1 = BOS, 2 = EOS, 3 = CLS; then the tokenizer's own ids
shifted by 4: byte ``b`` -> ``b + 4`` (``bytes``, vocab 260) or SentencePiece
piece ``s`` -> ``s + 4`` (``data.tokenizer=/path/to/model.model``, vocab
``pieces + 4``).

``local_text`` is a TFDS builder over a directory or glob of text files, one
example per file (features ``text``: the raw bytes, ``path``: relative to the
corpus root), split into train / validation by a hash of the relative path
(5% validation). Its default corpus is the running interpreter's standard
library ``.py`` files, so the main job needs no download. Build it explicitly

  python -m posjax.data.build local_text --data_dir=DIR --path='~/corpus/**/*.txt'

or let the trainer build it on first use into a cache keyed by the files'
names, sizes and modification times (``$POSJAX_CACHE_DIR``, default
``~/.cache/posjax``), so an edited corpus is rebuilt and an unchanged one is not;
``python -m posjax.data.cache`` lists and prunes that cache.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import uuid
import zlib
from typing import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from posjax.data import prepared

PAD, BOS, EOS, CLS = 0, 1, 2, 3
SPECIALS = 4
VOCAB_SIZE = 256 + SPECIALS  # Byte level.
SIZES = {'tiny': (32, 8), 'small': (512, 64), 'full': (None, None)}  # Train / validation files.


# ---------------------------------------------------------------- tokenizers

class ByteTokenizer:
  """UTF-8 bytes, ``b -> b + 4``."""
  unit = 'byte'
  vocab_size = VOCAB_SIZE

  def encode(self, data: bytes | str) -> np.ndarray:
    if isinstance(data, str):
      data = data.encode('utf-8')
    return np.frombuffer(data, dtype=np.uint8).astype(np.int32) + SPECIALS

  def decode(self, ids: Sequence[int]) -> bytes:
    ids = np.asarray(ids)
    return (ids[ids >= SPECIALS] - SPECIALS).astype(np.uint8).tobytes()


class SentencePieceTokenizer:
  """A trained SentencePiece model, ``piece -> piece + 4``."""
  unit = 'token'

  def __init__(self, model_path: str):
    import sentencepiece as spm
    self.model_path = model_path
    self.sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self.sp.get_piece_size() + SPECIALS

  def encode(self, data: bytes | str) -> np.ndarray:
    if isinstance(data, bytes):
      data = data.decode('utf-8', errors='replace')
    return np.asarray(self.sp.encode(data), np.int32) + SPECIALS

  def decode(self, ids: Sequence[int]) -> bytes:
    ids = [int(i) - SPECIALS for i in ids if int(i) >= SPECIALS]
    return self.sp.decode(ids).encode('utf-8')


def tokenizer(spec: str = 'bytes'):
  """``'bytes'`` or the path of a SentencePiece ``.model``; one-line error otherwise."""
  if spec in ('', 'bytes'):
    return ByteTokenizer()
  if not os.path.isfile(spec):
    raise ValueError(f'data.tokenizer: got {spec!r}; allowed: bytes, or the path of a '
                     'SentencePiece .model file (python -m posjax.data.train_tokenizer)')
  try:
    return SentencePieceTokenizer(spec)
  except Exception as e:  # sentencepiece raises OSError / RuntimeError on bad files.
    raise ValueError(f'data.tokenizer: {spec!r} is not a SentencePiece model '
                     f'({type(e).__name__}); allowed: bytes or a .model file') from None


def train_sentencepiece(texts: Iterable[str | bytes], model_prefix: str, *, vocab_size: int,
                        model_type: str = 'unigram', max_sentence_length: int = 16384) -> str:
  """Trains a SentencePiece model on ``texts``; returns ``model_prefix + '.model'``.

  Pad / BOS / EOS are not pieces (posjax adds its own); unknown is piece 0.
  """
  import sentencepiece as spm

  def sentences():
    for t in texts:
      if isinstance(t, bytes):
        t = t.decode('utf-8', errors='replace')
      yield from (line for line in t.splitlines() if line.strip())

  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences(), model_prefix=model_prefix, vocab_size=vocab_size,
      model_type=model_type, character_coverage=1.0, pad_id=-1, bos_id=-1, eos_id=-1,
      unk_id=0, max_sentence_length=max_sentence_length, hard_vocab_limit=False,
      minloglevel=2)
  return model_prefix + '.model'


# ------------------------------------------------------------ the corpus

def list_documents(path: str | None = None) -> list[str]:
  """Sorted document paths; ValueError('data.path: ...') if nothing matches.

  ``path`` None or '' means the running interpreter's standard library.
  """
  if not path:
    root = sysconfig.get_paths()['stdlib']
    files = []
    for d, subdirs, fs in os.walk(root):
      subdirs[:] = [s for s in subdirs
                    if s not in ('site-packages', 'dist-packages', '__pycache__')]
      files.extend(os.path.join(d, f) for f in fs if f.endswith('.py'))
  elif os.path.isdir(os.path.expanduser(path)):
    root = os.path.expanduser(path)
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  else:
    files = glob.glob(os.path.expanduser(path), recursive=True)
  files = sorted(f for f in files if os.path.isfile(f) and os.path.getsize(f) > 0)
  if not files:
    raise ValueError(f'data.path: no non-empty files match {path!r}; allowed: '
                     "a directory, a glob, or '' (the Python standard library)")
  return files


def split_documents(files: Sequence[str], split: str, valid_percent: int = 5) -> list[str]:
  """Deterministic train / validation split by a hash of the relative path; a corpus
  whose files all hash into one split has every file in both (``shared_split``)."""
  out = [f for f, valid in _hashed(files, valid_percent) if valid == (split == 'validation')]
  return out or list(files)


def shared_split(files: Sequence[str], valid_percent: int = 5) -> str | None:
  """The split every file hashes into, when one split takes them all; else None."""
  sides = {valid for _, valid in _hashed(files, valid_percent)}
  return None if len(sides) > 1 else 'validation' if sides.pop() else 'train'


def _hashed(files: Sequence[str], valid_percent: int) -> list[tuple[str, bool]]:
  root = _root(files)
  return [(f, zlib.crc32(os.path.relpath(f, root).encode()) % 100 < valid_percent)
          for f in files]


def _root(files: Sequence[str]) -> str:
  return os.path.commonpath(list(files)) if len(files) > 1 else os.path.dirname(files[0])


class LocalText(prepared.Builder):
  """Text files as a TFDS dataset: one example per file, train / validation."""
  OPTIONS = ('path',)

  def __init__(self, *, path: str = '', **kwargs):
    self.path = path
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info(
        tfds.features.FeaturesDict({'text': tfds.features.Text(), 'path': tfds.features.Text()}),
        f'Text files of {self.path or "the Python standard library"!r} (posjax)')

  def splits(self):
    files = _readable(list_documents(self.path))
    side = shared_split(files)
    if side:
      self.warn(f'every file of {self.path or "the standard library"} ({len(files)}) hashes '
                f'into {side}: training and evaluation use the same documents (add files to '
                'hold some out)')
    limits = dict(zip(('train', 'validation'), SIZES[self.builder_config.name]))
    return {split: _examples(split_documents(files, split)[:n], _root(files))
            for split, n in limits.items()}

  def inputs(self):
    return {'path': corpus_fingerprint(self.path)}


def corpus_fingerprint(path: str = '', files: Sequence[str] | None = None) -> str:
  """The corpus of ``path`` (its ``files``' names, sizes and mtimes) as one string."""
  where = os.path.realpath(os.path.expanduser(path)) if path else 'the standard library'
  return prepared.files_fingerprint(where, list_documents(path) if files is None else files)


def _readable(files: Sequence[str]) -> Sequence[str]:
  for f in files:  # Before anything is written: a build never stops halfway for this.
    try:
      with open(f, 'rb'):
        pass
    except OSError as e:
      raise ValueError(f'data.path: cannot read {f} ({e.strerror or e}); allowed: files you '
                       'can read (check their permissions), or a path without it') from None
  return files


def _examples(files: Sequence[str], root: str):
  for f in files:
    rel = os.path.relpath(f, root)
    with open(f, 'rb') as fh:
      yield rel, {'text': fh.read(), 'path': rel}


def cache_dir() -> str:
  return os.path.expanduser(os.environ.get('POSJAX_CACHE_DIR', '~/.cache/posjax'))


def local_text_dir(path: str = '', size: str = 'full') -> str:
  """A data_dir holding ``local_text/<size>`` of ``path``, built on first use.

  The directory name is a hash of the files' names, sizes and mtimes; concurrent
  builders write to private directories and the first rename wins. An entry with a
  missing or resized file is rebuilt, saying so on stderr. Each entry has a ``RECORD``
  of what it was built from, whose mtime is its last use (``posjax.data.cache``).
  """
  path = os.path.abspath(os.path.expanduser(path)) if path else ''
  files = list_documents(path)
  record = {'path': path, 'size': size, 'corpus': corpus_fingerprint(path, files),
            'documents': len(files)}
  key = hashlib.sha1(json.dumps([path, size, record['corpus']]).encode()).hexdigest()[:16]
  final = os.path.join(cache_dir(), 'local_text', key)
  entry = LocalText(config=size, data_dir=final, path=path)
  broken = prepared.damage(entry)
  if not broken:
    prepared.warn_recorded(entry)
  else:
    damaged = os.path.isdir(final)
    if damaged:
      sys.stderr.write(f'local_text: cache entry {final} is damaged ({broken}); rebuilding it\n')
    _build(final, record, replace=damaged)
  touch(final, record)
  return final


RECORD = 'posjax_cache.json'


def touch(entry: str, record: dict) -> None:
  """Marks cache ``entry`` used now, writing its ``record`` if it has none."""
  file = os.path.join(entry, RECORD)
  with contextlib.suppress(OSError):  # A read-only cache is still read.
    if os.path.isfile(file):
      os.utime(file)
    else:
      tmp = f'{file}.{uuid.uuid4().hex}'
      with open(tmp, 'w') as f:
        json.dump(record, f)
      os.replace(tmp, file)


def _build(final: str, record: dict, replace: bool) -> None:
  """Builds the entry of ``record`` privately and renames it to ``final`` (moving a
  damaged one aside first when ``replace``); no temporary directory outlives it."""
  tmp = f'{final}.tmp-{uuid.uuid4().hex}'
  try:
    tfds.disable_progress_bar()
    prepared.prepare(LocalText(config=record['size'], data_dir=tmp, path=record['path']))
    touch(tmp, record)
    sys.stderr.write(f'local_text: {record["documents"]} files of '
                     f'{record["path"] or "the standard library"} -> {final}\n')
    if replace:
      old = f'{final}.old-{uuid.uuid4().hex}'
      with contextlib.suppress(OSError):  # Another process moved it first.
        os.rename(final, old)
      shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # Another process finished first.
      os.rename(tmp, final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
