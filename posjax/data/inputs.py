"""The data an experiment reads, chosen by ``config.task`` and ``config.data``.

  task=lm              packed LM batches from ``local_text`` (``data.path``; the
                       default) or any TFDS text dataset in ``data.data_dir``
                       (lm1b, pg19, wiki40b/en, c4/en, ...: ``data.name``,
                       ``data.text_key``), ``data.tokenizer`` bytes or a
                       SentencePiece model; eval at every ``eval_lengths``
  task=sequence        a synthetic length-generalisation dataset; eval per length
  task=classification  listops, pathfinder32/128, lra_text, lra_image
  task=matching        lra_retrieval (two documents, one label)

Every dataset is read from its prepared array_record files (``tfds`` data sources,
no TensorFlow, no download).
Generated and LRA datasets are written by ``python -m posjax.data.build NAME
--data_dir=DIR --size=SIZE [--manual_dir=M]``; ``local_text`` without a
``data_dir`` is built on first use into a cache (``posjax.data.text``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from tensorflow_datasets.core import read_only_builder

from posjax.data import builders, listops, pipelines, synthetic, text


@dataclasses.dataclass(frozen=True)
class Classification:
  tokenize: Callable
  vocab_size: int      # Including a CLS id at ``vocab_size - 1``.
  num_classes: int


def _lra(name: str) -> Callable:
  def tokenize(ex):
    from posjax.data import lra
    return getattr(lra, name)(ex)
  return tokenize


_PIXELS = pipelines.PATHFINDER_VOCAB_SIZE + 1  # pixel + 1, and CLS.
_BYTES = 256 + 2  # byte + 1 (posjax.data.lra.TEXT_VOCAB_SIZE = 257), and CLS.
CLASSIFICATION = {
    'listops': Classification(pipelines.listops_example, len(listops.VOCAB) + 1, 10),
    'pathfinder32': Classification(pipelines.pathfinder_example, _PIXELS, 2),
    'pathfinder128': Classification(pipelines.pathfinder_example, _PIXELS, 2),
    'lra_text': Classification(_lra('text_example'), _BYTES, 2),
    'lra_image': Classification(_lra('image_example'), _PIXELS, 10),
}
MATCHING = {'lra_retrieval': Classification(_lra('retrieval_example'), _BYTES, 2)}
SEQUENCE = tuple(builders.SYNTHETIC_BUILDERS)
# TFDS catalog LM datasets: the feature holding the text.
LM_CATALOG = {'lm1b': 'text', 'pg19': 'book_text', 'wiki40b': 'text', 'c4': 'text'}


def _tfds_name(config) -> str:
  name = config.data.name
  return f'{name}/{config.data.get("size", "full")}' if name in builders.BUILDERS else name


def source(config):
  """The TFDS data source of ``config.data``, or a one-line error saying how to get it."""
  name, data_dir = config.data.name, config.data.get('data_dir') or None
  if name == 'local_text' and not data_dir:
    data_dir = text.local_text_dir(config.data.get('path', ''), config.data.get('size', 'full'))
  full = _tfds_name(config)
  if name in builders.BUILDERS:
    how = (f'allowed: a data_dir where it was built (python -m posjax.data.build {name} '
           f'--data_dir={data_dir or "DIR"} --size={config.data.get("size", "full")})')
    if not data_dir:
      raise ValueError(f'data.data_dir: required for {name}; allowed: a directory where you '
                       f'ran `python -m posjax.data.build {name} --data_dir=DIR`')
  else:
    how = (f'allowed: a TFDS dataset prepared there as array_record, e.g. `tfds build '
           f'{name} --data_dir={data_dir or "~/tensorflow_datasets"} --file_format=array_record`'
           ' (or `tfds convert_format` of a tfrecord copy), or data.name=local_text')
  try:  # From the prepared files alone: no builder code (catalog builders may need TF),
    # and never a download (tfds.data_source would start one for a missing dataset).
    return read_only_builder.builder_from_files(full, data_dir=data_dir).as_data_source()
  except Exception as e:  # tfds raises several types for a missing dataset.
    field = 'data.data_dir' if name in builders.BUILDERS else 'data.name'
    raise ValueError(f'{field}: no {full} under {data_dir or "the TFDS default data_dir"!r} '
                     f'({type(e).__name__}); {how}') from None


def text_key(config) -> str:
  name = config.data.name.split('/')[0].split(':')[0]
  return config.data.get('text_key') or LM_CATALOG.get(name, 'text')


def _eval_split(config, src) -> str:
  if config.data.get('eval_split'):
    return config.data.eval_split
  return 'validation' if 'validation' in src else 'test'


def check(config, mcfg) -> None:
  """Raises a one-line ``data.*`` / ``model.*`` error for data the model can't read."""
  task = config.get('task', 'lm')
  name = config.data.name
  specs = {'classification': CLASSIFICATION, 'matching': MATCHING}.get(task)
  classes = None
  if task == 'lm':
    need = text.tokenizer(config.data.get('tokenizer', 'bytes')).vocab_size
    if name == 'local_text' and not config.data.get('data_dir'):
      text.list_documents(config.data.get('path'))  # Raises 'data.path: ...'; builds later.
    else:
      _check_lm_source(config, source(config))
  elif task == 'sequence':
    if name not in SEQUENCE:
      raise ValueError(f'data.name: got {name!r}; allowed: {", ".join(SEQUENCE)} (for task=sequence)')
    need = synthetic.VOCAB_SIZE
  else:
    if name not in specs:
      raise ValueError(f'data.name: got {name!r}; allowed: {", ".join(specs)} (for task={task})')
    need, classes = specs[name].vocab_size, specs[name].num_classes
  if mcfg.vocab_size < need:
    raise ValueError(f'model.vocab_size: got {mcfg.vocab_size}; allowed: >= {need} (data.name={name!r})')
  if classes is not None and mcfg.num_classes != classes:
    raise ValueError(f'model.num_classes: got {mcfg.num_classes}; allowed: {classes} (data.name={name!r})')
  if task != 'lm':
    source(config)


def _check_lm_source(config, src) -> None:
  key, split = text_key(config), _eval_split(config, src)
  if 'train' not in src or split not in src:
    raise ValueError(f'data.eval_split: {config.data.name} has splits {", ".join(src)}; '
                     'allowed: a dataset with a train split and the eval split')
  features = src['train'].dataset_info.features
  if key not in features:
    raise ValueError(f'data.text_key: got {key!r}; allowed: {", ".join(features.keys())} '
                     f'(features of {config.data.name})')


def _lm_tokenize(config) -> Callable:
  tok, key = text.tokenizer(config.data.get('tokenizer', 'bytes')), text_key(config)
  return lambda ex: tok.encode(ex[key])


def train_iterator(config, process_index: int = 0, process_count: int = 1):
  """This process's checkpointable training iterator."""
  task = config.get('task', 'lm')
  shard = dict(batch_size=config.batch_size // process_count, seed=config.seed,
               process_index=process_index, process_count=process_count)
  split = source(config)['train']
  if task == 'lm':
    return pipelines.lm_train(split, tokenize=_lm_tokenize(config), seq_len=config.seq_len,
                              shuffle_window=config.data.get('shuffle_window', 1024), **shard)
  if task == 'sequence':
    return pipelines.sequence_train(split, max_length=config.seq_len, **shard)
  return pipelines.classification_train(split, max_length=config.seq_len, **_classify(config), **shard)


def eval_sets(config, process_index: int = 0, process_count: int = 1) -> dict:
  """``{name: [batches]}``: one set per eval length (lm, sequence) or the validation split."""
  task = config.get('task', 'lm')
  shard = dict(batch_size=config.eval_batch_size // process_count,
               process_index=process_index, process_count=process_count)
  src = source(config)
  if task == 'lm':
    split = src[_eval_split(config, src)]
    return {int(n): pipelines.lm_eval(split, tokenize=_lm_tokenize(config), length=int(n),
                                      num_batches=config.num_eval_batches, **shard)
            for n in config.eval_lengths}
  limit = config.eval_batch_size * config.num_eval_batches
  if task == 'sequence':
    return pipelines.sequence_eval(src['test'], max_examples_per_length=limit, **shard)
  split = _eval_split(config, src)
  return {split: pipelines.classification_eval(
      src[split], max_length=config.seq_len, max_examples=limit,
      **_classify(config), **shard)}


def _classify(config) -> dict:
  spec = {**CLASSIFICATION, **MATCHING}[config.data.name]
  cls_id = spec.vocab_size - 1 if config.model.pooling == 'cls' else None
  return dict(tokenize=spec.tokenize, cls_id=cls_id)
