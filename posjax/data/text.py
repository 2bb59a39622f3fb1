"""A byte-level text reader: local files -> packed ``[B, L]`` grain batches.

Token ids: 0 = pad, 1 = BOS, 2 = EOS, 3 = CLS, byte b -> b + 4 (vocab 260).
Documents are the running interpreter's standard library ``.py`` files (the
default) or the files under a user-given directory / glob (``config.data.path``).
A document is ``[BOS] + bytes + [EOS]``; it is cut into chunks of at most
``L + 1`` tokens (stride ``L``, so every token is predicted once), each chunk
gives ``inputs = chunk[:-1]``, ``targets = chunk[1:]``, and chunks are packed
into rows by grain's first-fit packing, which emits ``segment_ids`` (1, 2, ...;
0 = padding) and ``positions`` that restart at 0 for every chunk.

Training batches come from a checkpointable grain iterator (``get_state`` /
``set_state``); evaluation batches are unpacked windows of each eval length.
"""
from __future__ import annotations

import glob
import os
import sysconfig
import zlib
from typing import Sequence

import grain
import numpy as np

PAD, BOS, EOS, CLS = 0, 1, 2, 3
BYTE_OFFSET = 4
VOCAB_SIZE = 256 + BYTE_OFFSET


def encode(data: bytes | str) -> np.ndarray:
  if isinstance(data, str):
    data = data.encode('utf-8')
  return np.frombuffer(data, dtype=np.uint8).astype(np.int32) + BYTE_OFFSET


def decode(ids: Sequence[int]) -> bytes:
  ids = np.asarray(ids)
  ids = ids[ids >= BYTE_OFFSET]
  return (ids - BYTE_OFFSET).astype(np.uint8).tobytes()


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
  elif os.path.isdir(path):
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  else:
    files = glob.glob(path, recursive=True)
  files = sorted(f for f in files if os.path.isfile(f) and os.path.getsize(f) > 0)
  if not files:
    raise ValueError(f'data.path: no non-empty files match {path!r}; allowed: '
                     "a directory, a glob, or '' (the Python standard library)")
  return files


def split_documents(files: Sequence[str], split: str,
                    valid_percent: int = 5) -> list[str]:
  """Deterministic train / validation split by a hash of the file name."""
  if split not in ('train', 'validation'):
    raise ValueError(f'split: got {split!r}; allowed: train, validation')
  root = (os.path.commonpath(list(files)) if len(files) > 1
          else os.path.dirname(files[0]))
  def is_valid(f):
    key = os.path.relpath(f, root)
    return zlib.crc32(key.encode()) % 100 < valid_percent
  out = [f for f in files if is_valid(f) == (split == 'validation')]
  if not out:  # Tiny corpora: use everything for both.
    out = list(files)
  return out


def _read_tokens(path: str, start: int, length: int) -> np.ndarray:
  """Tokens ``[start, start + length)`` of ``[BOS] + bytes(path) + [EOS]``."""
  size = os.path.getsize(path)
  n = size + 2
  stop = min(start + length, n)
  b0, b1 = max(start - 1, 0), min(stop - 1, size)  # Byte range covered.
  with open(path, 'rb') as f:
    f.seek(b0)
    body = encode(f.read(max(b1 - b0, 0)))
  parts = []
  if start == 0:
    parts.append(np.array([BOS], np.int32))
  parts.append(body)
  if stop == n:
    parts.append(np.array([EOS], np.int32))
  return np.concatenate(parts)


def _chunk_index(files: Sequence[str], seq_len: int) -> np.ndarray:
  """``[N, 2]`` (file index, token offset) of every chunk of every document."""
  rows = []
  for i, f in enumerate(files):
    n = os.path.getsize(f) + 2
    starts = np.arange(0, n - 1, seq_len, dtype=np.int64)
    rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
  return np.concatenate(rows, axis=0)


def train_dataset(files: Sequence[str], *, seq_len: int, batch_size: int,
                  seed: int, process_index: int = 0, process_count: int = 1
                  ) -> grain.IterDataset:
  """Packed training batches of ``batch_size`` rows (this process's share)."""
  files = list(files)
  index = _chunk_index(files, seq_len)

  def load(row):
    tokens = _read_tokens(files[int(row[0])], int(row[1]), seq_len + 1)
    return {'inputs': tokens[:-1], 'targets': tokens[1:]}

  ds = grain.MapDataset.source(index).shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat().map(load)
  ds = grain.experimental.FirstFitPackIterDataset(
      ds.to_iter_dataset(), length_struct={'inputs': seq_len, 'targets': seq_len},
      num_packing_bins=batch_size, seed=seed, shuffle_bins=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.map(lambda b: {
      'inputs': b['inputs'].astype(np.int32),
      'targets': b['targets'].astype(np.int32),
      'segment_ids': b['inputs_segment_ids'].astype(np.int32),
      'positions': b['inputs_positions'].astype(np.int32)})


def train_iterator(config, process_index: int = 0, process_count: int = 1):
  """The training iterator for an experiment config (checkpointable)."""
  files = split_documents(list_documents(config.data.get('path')), 'train')
  ds = train_dataset(files, seq_len=config.seq_len,
                     batch_size=config.batch_size // process_count,
                     seed=config.seed, process_index=process_index,
                     process_count=process_count)
  return iter(ds)


def eval_batches(files: Sequence[str], *, length: int, batch_size: int,
                 num_batches: int, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """Unpacked windows of ``length`` tokens, the same ones every call.

  One window of every document long enough, then another, ...; window k of
  a document is its tokens ``[k*length, (k+1)*length]`` (inputs and shifted
  targets), with positions 0..length-1 and one segment (k is staggered across
  documents so the rows are not all file headers). Rows are split across
  processes.
  """
  need = batch_size * num_batches
  files = [f for f in files if os.path.getsize(f) + 2 > length]
  if not files:
    raise ValueError(f'eval_lengths: no validation document is longer than '
                     f'{length} tokens; allowed: shorter eval lengths')
  rows = []
  windows = [(os.path.getsize(f) + 1) // length for f in files]  # Full windows.
  for r in range(max(windows)):  # Round r: one unused window of every document.
    for i, (f, n) in enumerate(zip(files, windows)):
      if r < n and len(rows) < need:
        rows.append(_read_tokens(f, ((i + r) % n) * length, length + 1))
    if len(rows) == need:
      break
  while len(rows) < need:  # Too little text: repeat windows.
    rows.append(rows[len(rows) % max(len(rows), 1)])
  tokens = np.stack(rows)[process_index::process_count]
  per = batch_size // process_count
  out = []
  for i in range(num_batches):
    t = tokens[i * per:(i + 1) * per]
    out.append({
        'inputs': t[:, :-1], 'targets': t[:, 1:],
        'segment_ids': np.ones((per, length), np.int32),
        'positions': np.broadcast_to(np.arange(length, dtype=np.int32),
                                     (per, length)).copy()})
  return out


def eval_sets(config, process_index: int = 0, process_count: int = 1
              ) -> dict[int, list[dict[str, np.ndarray]]]:
  files = split_documents(list_documents(config.data.get('path')), 'validation')
  return {int(length): eval_batches(
      files, length=int(length), batch_size=config.eval_batch_size,
      num_batches=config.num_eval_batches, process_index=process_index,
      process_count=process_count) for length in config.eval_lengths}
