"""Input pipelines: grain over ``tfds`` data-source splits, pure numpy batches.

Language modelling's pipelines are in ``posjax.data.lm_pipelines``, on the same
shared pieces (``train_examples``, ``pack``).

Every function takes ``process_index`` / ``process_count`` and returns *this
process's* share of the global batch: ``batch_size`` is the per-process batch.
Training functions return a checkpointable grain iterator (``iter()`` of a
grain dataset: ``get_state()`` / ``set_state()``, so
``grain.checkpoint.CheckpointSave`` works on it); evaluation functions return
plain lists of batches that cover a split once, in order, with the same number
of batches (and the same shapes) on every process.

Classification (ListOps, Pathfinder)
------------------------------------
``classification_train`` / ``classification_eval`` take a ``tokenize(example)
-> (int32 tokens, int label)`` (``listops_example``, ``pathfinder_example``)
and give ``{'inputs': int32[B, L], 'label': int32[B]}`` with ``L =
max_length``: tokens are right-padded with 0 (PAD) or truncated; with
``cls_id`` the CLS token is prepended and counts towards ``L`` (so at most
``L - 1`` data tokens survive). Tokens given as an image ``[H, W]`` are
flattened row-major, and the batch adds ``'position_rows': int32[B, 3, L]``
(``image_position_rows``: Qwen2-VL's temporal / height / width positions). Training shuffles by ``seed`` (a fresh order
every epoch: grain's ``shuffle`` before ``repeat`` reseeds per epoch), shards
the shuffled order per process (``[process_index::process_count]``, disjoint),
repeats forever and batches with ``drop_remainder``. Evaluation batches add
``'weight': float32[B]`` (1 for real examples, 0 for the rows that pad the last
batches); process ``p`` gets examples ``p, p + P, p + 2P, ...`` of the split
(in order). Padding rows are copies of the split's first example (not all-PAD
rows, which can give NaNs under fully-masked attention), so mask with
``weight``.

Tokens: ListOps uses ``listops.VOCAB`` (parentheses dropped, as LRA);
Pathfinder gives the image as ``[R, R]`` pixel tokens with
``token = pixel + 1`` (``PATHFINDER_VOCAB_SIZE`` = 257), so 0 stays PAD.
Synthetic length generalisation (decoder-only format)
-----------------------------------------------------
Each example becomes ``tokens, mask = synthetic.to_sequence(example)`` and
``x = tokens[:-1], y = tokens[1:], w = mask[:-1]`` (w is 1 exactly where ``y``
is an answer token). ``sequence_train`` packs several examples per row with
grain's first-fit packing: batches ``{'inputs', 'targets', 'segment_ids',
'positions': int32[B, L], 'weights': float32[B, L]}``, segment ids 1, 2, ...
per example (0 = padding), positions restart at 0 for every example, weights 0
on padding. Examples whose ``x`` is longer than ``max_length`` are **skipped**
(never truncated: a truncated answer would be a wrong target); if (nearly)
all are, grain raises once more than 99.9% of 1000 consecutive examples were
skipped.

``sequence_eval`` groups a split by its ``'length'`` feature and returns
``{length: [batch, ...]}`` of unpacked examples (one per row; padded to the
longest ``x`` of that length group across all processes, so shapes agree on
every host), with the same keys plus ``'example_weight': float32[B]`` (0 for
padding rows, which are copies of the group's first example with ``weights``
zeroed). Per-length sequence accuracy: a row is correct iff
``argmax == targets`` wherever ``weights > 0``; average with
``example_weight``.
"""
from __future__ import annotations

import collections
from typing import Any, Callable, Optional, Sequence

import grain
import numpy as np

from posjax.data import listops, synthetic

PAD = 0
PATHFINDER_OFFSET = 1  # token = pixel + 1, so PAD (0) is never a pixel
PATHFINDER_VOCAB_SIZE = 256 + PATHFINDER_OFFSET  # 257

Tokenize = Callable[[Any], tuple[np.ndarray, int]]
Batch = dict[str, np.ndarray]


def check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index / process_count: got {process_index} / '
                     f'{process_count}; need 0 <= process_index < process_count')


def check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ValueError(f'batch_size: got {batch_size}; need >= 1')


# Per-example reads ahead of packing: grain's default (16 threads, 500 buffered
# futures, all scanned on every element) costs ~1 ms per example here.
EXAMPLE_READS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=16)


def train_examples(source: Sequence, *, batch_size: int, seed: int, process_index: int,
                    process_count: int) -> grain.MapDataset:
  """This process's endless share of ``source``: a fresh permutation every epoch
  (``repeat`` reseeds ``shuffle``), split ``[p::P]`` so shards are disjoint."""
  check_process(process_index, process_count)
  check_batch_size(batch_size)
  if len(source) < process_count:
    raise ValueError(f'source has {len(source)} examples, fewer than '
                     f'process_count={process_count}')
  ds = grain.MapDataset.source(source).shuffle(seed=seed)
  return ds[process_index::process_count].repeat()


# --------------------------------------------------------------- tokenizers

def listops_example(ex: dict) -> tuple[np.ndarray, int]:
  """LRA ListOps: ``inputs`` text through ``listops.tokenize`` (no parentheses)."""
  text = ex['inputs']
  if isinstance(text, bytes):
    text = text.decode('utf-8')
  return listops.tokenize(text), int(ex['targets'])


def pathfinder_example(ex: dict) -> tuple[np.ndarray, int]:
  """Pathfinder: the image as ``[R, R]`` tokens ``pixel + 1``."""
  image = np.asarray(ex['image'])
  return image.reshape(image.shape[:2]).astype(np.int32) + PATHFINDER_OFFSET, int(ex['label'])


# ---------------------------------------------------------- classification

def image_position_rows(height: int, width: int, offset: int, length: int) -> np.ndarray:
  """Position rows ``[3, length]`` of ``offset`` text tokens, an image ``[height,
  width]`` flattened row-major, then text again (Qwen2-VL's ``get_rope_index``):
  text token j has three rows j; pixel (r, c) has (offset, offset + r, offset + c);
  text after the image continues from the largest position + 1."""
  n = height * width
  r, c = np.divmod(np.arange(n), width)
  image = np.stack([np.full(n, offset), offset + r, offset + c])
  after = offset + max(height, width) + np.arange(max(length - offset - n, 0))
  rows = np.concatenate([np.broadcast_to(np.arange(offset), (3, offset)), image,
                         np.broadcast_to(after, (3, after.size))], 1)
  return rows[:, :length].astype(np.int32)


def _row(tokens, max_length: int, cls_id: Optional[int]) -> np.ndarray:
  tokens = np.asarray(tokens, np.int32).reshape(-1)
  if cls_id is not None:
    tokens = np.concatenate([np.array([cls_id], np.int32), tokens])
  row = np.zeros(max_length, np.int32)
  n = min(tokens.size, max_length)
  row[:n] = tokens[:n]
  return row


def _classification_row(parts: tuple, max_length: int, cls_id: Optional[int]) -> Batch:
  """``tokenize(ex)`` = ``(tokens, label)`` -> ``inputs``; ``(tokens1, tokens2,
  label)`` (matching) -> ``inputs1``, ``inputs2``."""
  *tokens, label = parts
  keys = ['inputs'] if len(tokens) == 1 else [f'inputs{i + 1}' for i in range(len(tokens))]
  out = {k: _row(t, max_length, cls_id) for k, t in zip(keys, tokens)}
  if keys == ['inputs'] and np.ndim(tokens[0]) == 2:
    out['position_rows'] = image_position_rows(*np.shape(tokens[0]), int(cls_id is not None),
                                               max_length)
  out['label'] = np.int32(label)
  return out


def classification_dataset(source: Sequence, *, tokenize: Tokenize, max_length: int,
                           batch_size: int, seed: int, process_index: int = 0,
                           process_count: int = 1, cls_id: Optional[int] = None
                           ) -> grain.MapDataset:
  """The (infinite, random-access) dataset behind ``classification_train``."""
  if max_length < (2 if cls_id is not None else 1):
    raise ValueError(f'max_length: got {max_length}; need room for at least one token')
  ds = train_examples(source, batch_size=batch_size, seed=seed, process_index=process_index,
                       process_count=process_count)
  ds = ds.map(lambda ex: _classification_row(tokenize(ex), max_length, cls_id))
  return ds.batch(batch_size, drop_remainder=True)


def classification_train(source: Sequence, *, tokenize: Tokenize, max_length: int,
                         batch_size: int, seed: int, process_index: int = 0,
                         process_count: int = 1, cls_id: Optional[int] = None):
  """Checkpointable iterator of ``{'inputs': int32[B, L], 'label': int32[B]}``,
  prefetching a few batches in background threads."""
  ds = classification_dataset(
      source, tokenize=tokenize, max_length=max_length, batch_size=batch_size,
      seed=seed, process_index=process_index, process_count=process_count, cls_id=cls_id)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)))


def _shard_indices(n: int, batch_size: int, process_index: int, process_count: int
                   ) -> tuple[list[int], int]:
  """This process's indices of ``range(n)`` and the padded row count (equal on
  every process, a multiple of ``batch_size``)."""
  per_process = -(-n // process_count)
  rows = max(-(-per_process // batch_size), 1) * batch_size
  return list(range(process_index, n, process_count)), rows


def classification_eval(source: Sequence, *, tokenize: Tokenize, max_length: int,
                        batch_size: int, process_index: int = 0, process_count: int = 1,
                        cls_id: Optional[int] = None,
                        max_examples: Optional[int] = None) -> list[Batch]:
  """Batches covering the split (or its first ``max_examples``) once, in order;
  ``'weight'`` is 0 on padding rows."""
  check_process(process_index, process_count)
  check_batch_size(batch_size)
  n = len(source) if max_examples is None else min(len(source), int(max_examples))
  if n < 1:
    raise ValueError('classification_eval: empty split')
  indices, rows = _shard_indices(n, batch_size, process_index, process_count)
  examples = [_classification_row(tokenize(source[i]), max_length, cls_id) for i in indices]
  filler = (examples[0] if examples
            else _classification_row(tokenize(source[0]), max_length, cls_id))
  weight = np.zeros(rows, np.float32)
  weight[:len(examples)] = 1.0
  examples += [filler] * (rows - len(examples))
  stacked = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  stacked['weight'] = weight
  return [{k: v[s:s + batch_size] for k, v in stacked.items()} for s in range(0, rows, batch_size)]


# ----------------------------------------------------- synthetic sequences

def sequence_example(ex: dict) -> Batch:
  """``{'inputs': x, 'targets': y, 'weights': w}`` of one synthetic example."""
  tokens, mask = synthetic.to_sequence(ex)
  return {'inputs': tokens[:-1].astype(np.int32), 'targets': tokens[1:].astype(np.int32),
          'weights': mask[:-1].astype(np.float32)}


def sequence_dataset(source: Sequence, *, max_length: int, batch_size: int, seed: int,
                     process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The (infinite) packed dataset behind ``sequence_train``."""
  ds = train_examples(source, batch_size=batch_size, seed=seed, process_index=process_index,
                       process_count=process_count).map(sequence_example)
  ds = ds.filter(lambda e: e['inputs'].size <= max_length)  # Skip, never truncate.
  length = {'inputs': max_length, 'targets': max_length, 'weights': max_length}
  # Fail (instead of spinning forever) when no example fits: grain raises once
  # more than 99.9% of a window of 1000 elements is filtered out.
  ds = grain.experimental.WithOptionsIterDataset(
      ds.to_iter_dataset(EXAMPLE_READS),
      grain.experimental.DatasetOptions(filter_raise_threshold_ratio=0.999))
  return pack(ds, length, batch_size, seed)


def pack(ds: grain.IterDataset, length: dict, batch_size: int, seed: int) -> grain.IterDataset:
  """First-fit packing into ``batch_size`` rows: adds ``segment_ids`` (1, 2, ...;
  0 = padding) and ``positions`` restarting at 0 for every packed element."""
  ds = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=length, num_packing_bins=batch_size, seed=seed, shuffle_bins=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  def finish(b):
    out = {k: b[k].astype(np.float32 if k == 'weights' else np.int32) for k in length}
    out['segment_ids'] = b['inputs_segment_ids'].astype(np.int32)
    out['positions'] = b['inputs_positions'].astype(np.int32)
    return out
  return ds.map(finish)


def sequence_train(source: Sequence, *, max_length: int, batch_size: int, seed: int,
                   process_index: int = 0, process_count: int = 1):
  """Checkpointable iterator of packed decoder batches (see module docstring)."""
  return iter(sequence_dataset(source, max_length=max_length, batch_size=batch_size,
                               seed=seed, process_index=process_index,
                               process_count=process_count))


def unpacked_batch(examples: list[Batch], width: int, real: int) -> Batch:
  """One example per row, padded to ``width``; rows from ``real`` on are zero-weight
  padding (``example_weight`` 0)."""
  b = len(examples)
  out = {'inputs': np.zeros((b, width), np.int32),
         'targets': np.zeros((b, width), np.int32),
         'segment_ids': np.zeros((b, width), np.int32),
         'positions': np.zeros((b, width), np.int32),
         'weights': np.zeros((b, width), np.float32),
         'example_weight': np.zeros(b, np.float32)}
  for r, e in enumerate(examples):
    n = e['inputs'].size
    out['inputs'][r, :n] = e['inputs']
    out['targets'][r, :n] = e['targets']
    out['segment_ids'][r, :n] = 1
    out['positions'][r, :n] = np.arange(n)
    if r < real:
      out['weights'][r, :n] = e['weights']
      out['example_weight'][r] = 1.0
  return out


def sequence_eval(source: Sequence, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, max_examples_per_length: Optional[int] = None,
                  width_multiple: int = 1) -> dict[int, list[Batch]]:
  """``{length: [batch, ...]}``: the split grouped by its ``'length'`` feature,
  unpacked (one example per row), every example of a group exactly once; rows
  padded to a multiple of ``width_multiple`` (fewer shapes to compile)."""
  check_process(process_index, process_count)
  check_batch_size(batch_size)
  groups: dict[int, list[int]] = collections.defaultdict(list)
  for i in range(len(source)):
    groups[int(source[i]['length'])].append(i)
  out = {}
  for length in sorted(groups):
    members = groups[length]
    if max_examples_per_length is not None:
      members = members[:int(max_examples_per_length)]
    seqs = [sequence_example(source[i]) for i in members]  # All processes: same width.
    width = -(-max(s['inputs'].size for s in seqs) // width_multiple) * width_multiple
    mine, rows = _shard_indices(len(seqs), batch_size, process_index, process_count)
    examples = [seqs[k] for k in mine]
    real = len(examples)
    examples += [seqs[0]] * (rows - real)
    out[length] = []
    for s in range(0, rows, batch_size):
      out[length].append(unpacked_batch(examples[s:s + batch_size], width,
                                         max(0, min(real - s, batch_size))))
  return out
