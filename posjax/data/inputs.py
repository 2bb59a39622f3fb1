"""The data an experiment reads, chosen by ``config.task`` and ``config.data``.

  task=lm              local text (``data.path``), packed byte-level LM batches
  task=sequence        a synthetic length-generalisation dataset from TFDS
                       (``data.name``, ``data.size``, ``data.data_dir``); eval per length
  task=classification  listops / pathfinder32 / pathfinder128 from TFDS; eval on
                       the validation split

TFDS datasets are read with ``tfds.data_source`` after
``python -m posjax.data.build NAME --data_dir=DIR --size=SIZE``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow_datasets as tfds

from posjax.data import builders, listops, pipelines, synthetic, text


@dataclasses.dataclass(frozen=True)
class Classification:
  tokenize: Callable
  vocab_size: int      # Including a CLS id at ``vocab_size - 1``.
  num_classes: int


CLASSIFICATION = {
    'listops': Classification(pipelines.listops_example, len(listops.VOCAB) + 1, 10),
    'pathfinder32': Classification(pipelines.pathfinder_example,
                                   pipelines.PATHFINDER_VOCAB_SIZE + 1, 2),
    'pathfinder128': Classification(pipelines.pathfinder_example,
                                    pipelines.PATHFINDER_VOCAB_SIZE + 1, 2),
}
SEQUENCE = tuple(builders.SYNTHETIC_BUILDERS)


def _source(config):
  """The TFDS data source of ``config.data``, or a one-line error saying how to build it."""
  name, size, data_dir = config.data.name, config.data.get('size', 'full'), config.data.get('data_dir')
  if not data_dir:
    raise ValueError('data.data_dir: required for TFDS datasets; allowed: a directory '
                     f'written by `python -m posjax.data.build {name} --data_dir=DIR --size={size}`')
  try:
    return tfds.data_source(f'{name}/{size}', data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing dataset.
    raise ValueError(f'data.data_dir: no {name}/{size} under {data_dir!r} ({type(e).__name__}); '
                     f'build it: python -m posjax.data.build {name} --data_dir={data_dir} '
                     f'--size={size}') from None


def check(config, mcfg) -> None:
  """Raises a one-line ``data.*`` / ``model.*`` error for data the model can't read."""
  task = config.get('task', 'lm')
  name = config.data.name
  if task == 'lm':
    if name != 'local_text':
      raise ValueError(f'data.name: got {name!r}; allowed: local_text (for task=lm)')
    text.list_documents(config.data.get('path'))  # Raises 'data.path: ...'.
    need, classes = text.VOCAB_SIZE, None
  elif task == 'sequence':
    if name not in SEQUENCE:
      raise ValueError(f'data.name: got {name!r}; allowed: {", ".join(SEQUENCE)} (for task=sequence)')
    need, classes = synthetic.VOCAB_SIZE, None
  else:
    if name not in CLASSIFICATION:
      raise ValueError(f'data.name: got {name!r}; allowed: {", ".join(CLASSIFICATION)} '
                       '(for task=classification)')
    need, classes = CLASSIFICATION[name].vocab_size, CLASSIFICATION[name].num_classes
  if mcfg.vocab_size < need:
    raise ValueError(f'model.vocab_size: got {mcfg.vocab_size}; allowed: >= {need} (data.name={name!r})')
  if classes is not None and mcfg.num_classes != classes:
    raise ValueError(f'model.num_classes: got {mcfg.num_classes}; allowed: {classes} (data.name={name!r})')
  if task != 'lm':
    _source(config)


def train_iterator(config, process_index: int = 0, process_count: int = 1):
  """This process's checkpointable training iterator."""
  task = config.get('task', 'lm')
  if task == 'lm':
    return text.train_iterator(config, process_index, process_count)
  shard = dict(batch_size=config.batch_size // process_count, seed=config.seed,
               process_index=process_index, process_count=process_count)
  split = _source(config)['train']
  if task == 'sequence':
    return pipelines.sequence_train(split, max_length=config.seq_len, **shard)
  return pipelines.classification_train(split, max_length=config.seq_len, **_classify(config), **shard)


def eval_sets(config, process_index: int = 0, process_count: int = 1) -> dict:
  """``{name: [batches]}``: one set per eval length (lm, sequence) or the validation split."""
  task = config.get('task', 'lm')
  if task == 'lm':
    return text.eval_sets(config, process_index, process_count)
  shard = dict(batch_size=config.eval_batch_size // process_count,
               process_index=process_index, process_count=process_count)
  limit = config.eval_batch_size * config.num_eval_batches
  if task == 'sequence':
    return pipelines.sequence_eval(_source(config)['test'], max_examples_per_length=limit, **shard)
  return {'validation': pipelines.classification_eval(
      _source(config)['validation'], max_length=config.seq_len, max_examples=limit,
      **_classify(config), **shard)}


def _classify(config) -> dict:
  spec = CLASSIFICATION[config.data.name]
  cls_id = spec.vocab_size - 1 if config.model.pooling == 'cls' else None
  return dict(tokenize=spec.tokenize, cls_id=cls_id)
