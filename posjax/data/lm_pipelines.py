"""Language-modelling input pipelines (the shared pieces: ``posjax.data.pipelines``).

``lm_train`` packs ``[BOS] + tokenize(doc) + [EOS]`` windows of ``L + 1``
tokens (stride ``L``) into ``{'inputs', 'targets', 'segment_ids',
'positions': int32[B, L]}`` with positions restarting at 0 per window;
``lm_eval`` gives fixed unpacked windows of one evaluation length.

Every function takes ``process_index`` / ``process_count`` and returns *this
process's* share of the global batch, as ``posjax.data.pipelines`` does.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import grain
import numpy as np

from posjax.data import text
from posjax.data.pipelines import (EXAMPLE_READS, Batch, check_batch_size, check_process, pack,
                                   train_examples)


class _Chunks(grain.experimental.FlatMapTransform):
  """A document's tokens -> windows of ``L + 1`` tokens with stride ``L`` (every
  token is predicted once), each as ``{'inputs': w[:-1], 'targets': w[1:]}``."""

  def __init__(self, seq_len: int):
    self.seq_len = seq_len
    self.max_fan_out = 1 << 20

  def flat_map(self, tokens):
    return [{'inputs': tokens[s:s + self.seq_len], 'targets': tokens[s + 1:s + self.seq_len + 1]}
            for s in range(0, tokens.size - 1, self.seq_len)]


def _document(tokenize: Callable[[Any], np.ndarray]) -> Callable[[Any], np.ndarray]:
  return lambda ex: np.concatenate([[text.BOS], tokenize(ex), [text.EOS]]).astype(np.int32)


def lm_train(source: Sequence, *, tokenize: Callable[[Any], np.ndarray], seq_len: int,
             batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
             shuffle_window: int = 1024):
  """Checkpointable iterator of packed LM batches ``{'inputs', 'targets',
  'segment_ids', 'positions': int32[B, L]}``.

  Documents (``[BOS] + tokenize(example) + [EOS]``) are shuffled by ``seed``
  (afresh every epoch) and sharded per process, cut into windows (``_Chunks``),
  shuffled again within ``shuffle_window`` windows so a long document does not
  fill whole batches, and packed first-fit; positions restart at 0 in every
  window and segment ids keep windows apart.
  """
  ds = train_examples(source, batch_size=batch_size, seed=seed, process_index=process_index,
                       process_count=process_count)
  ds = ds.map(_document(tokenize)).to_iter_dataset(EXAMPLE_READS)
  ds = grain.experimental.FlatMapIterDataset(ds, _Chunks(seq_len))
  if shuffle_window > 1:
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
  return iter(pack(ds, {'inputs': seq_len, 'targets': seq_len}, batch_size, seed))


def lm_eval(source: Sequence, *, tokenize: Callable[[Any], np.ndarray], length: int,
            batch_size: int, num_batches: int, process_index: int = 0,
            process_count: int = 1, span: Optional[int] = None) -> list[Batch]:
  """``num_batches`` batches of unpacked ``length``-token windows, the same ones
  every call (positions 0..length-1, one segment per row).

  Documents are read in order; each one long enough gives one window per round
  (document ``i`` starts at its window ``i mod n``, so rows are not all file
  headers), rounds repeat until ``batch_size * num_batches`` rows exist, and
  process ``p`` takes rows ``p, p + P, ...``.

  ``span`` (a multiple of ``length``): the windows are those of length ``span``,
  each cut into ``span / length`` rows, so every evaluation length scores the
  same tokens and only the context differs (Press et al.'s comparison); a batch
  then has ``batch_size * span / length`` rows.
  """
  check_process(process_index, process_count)
  check_batch_size(batch_size)
  if span is not None and span != length:
    if span % length:
      raise ValueError(f'eval_lengths: {length} does not divide the span {span}')
    cut = span // length
    batches = lm_eval(source, tokenize=tokenize, length=span, batch_size=batch_size,
                      num_batches=num_batches, process_index=process_index,
                      process_count=process_count)
    return [_cut(b, cut) for b in batches]
  need = batch_size * process_count * num_batches
  document = _document(tokenize)
  docs, rows = [], []  # Documents with at least one full window.
  for i in range(len(source)):
    tokens = document(source[i])
    if (tokens.size - 1) // length:
      docs.append(tokens)
      rows.append(_window(tokens, length, len(docs) - 1))
      if len(rows) == need:
        break
  if not docs:
    raise ValueError(f'eval_lengths: no evaluation document is longer than {length} '
                     'tokens; allowed: shorter eval lengths')
  r = 1
  while len(rows) < need:  # Later rounds: the next window of every document, cycling.
    rows.extend(_window(t, length, i + r) for i, t in enumerate(docs[:need - len(rows)]))
    r += 1
  tokens = np.stack(rows)[process_index::process_count]
  ones = np.ones((batch_size, length), np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy()
  return [{'inputs': t[:, :-1], 'targets': t[:, 1:], 'segment_ids': ones, 'positions': positions}
          for t in (tokens[i * batch_size:(i + 1) * batch_size] for i in range(num_batches))]


def _cut(batch: Batch, n: int) -> Batch:
  """Each row of ``batch`` as ``n`` consecutive rows (positions restart at 0)."""
  b, span = batch['inputs'].shape
  out = {k: v.reshape(b * n, span // n) for k, v in batch.items()}
  out['positions'] = out['positions'] - out['positions'][:, :1]
  return out


def _window(tokens: np.ndarray, length: int, k: int) -> np.ndarray:
  n = (tokens.size - 1) // length
  s = (k % n) * length
  return tokens[s:s + length + 1]
