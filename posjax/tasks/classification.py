"""``classification`` (one label per example: LRA ListOps, Text, Image,
Pathfinder) and ``matching`` (one label per pair of documents: LRA Retrieval).

``DATASETS`` maps each dataset to its tokenizer, vocabulary (with a CLS id at
``vocab_size - 1``) and class count; evaluation is on the validation split, or
test where the dataset has none (``data.eval_split`` overrides).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp

from posjax.data import inputs, listops, pipelines
from posjax.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class Dataset:
  tokenize: Callable
  vocab_size: int      # Including a CLS id at ``vocab_size - 1``.
  num_classes: int
  image: bool = False  # Tokens are an image: batches carry its position rows.


def _lra(name: str) -> Callable:
  def tokenize(ex):
    from posjax.data import lra
    return getattr(lra, name)(ex)
  return tokenize


_PIXELS = pipelines.PATHFINDER_VOCAB_SIZE + 1  # pixel + 1, and CLS.
_BYTES = 256 + 2  # byte + 1 (posjax.data.lra.TEXT_VOCAB_SIZE = 257), and CLS.


class Classification(Task):
  name = 'classification'
  model_kind = 'encoder_classifier'
  DATASETS = {
      'listops': Dataset(pipelines.listops_example, len(listops.VOCAB) + 1, 10),
      'pathfinder32': Dataset(pipelines.pathfinder_example, _PIXELS, 2, image=True),
      'pathfinder128': Dataset(pipelines.pathfinder_example, _PIXELS, 2, image=True),
      'lra_text': Dataset(_lra('text_example'), _BYTES, 2),
      'lra_image': Dataset(_lra('image_example'), _PIXELS, 10, image=True),
  }

  @property
  def dataset(self) -> Dataset:
    return self.DATASETS[self.config.data.name]

  def check(self, mcfg) -> None:
    name = self.config.data.name
    if name not in self.DATASETS:
      raise ValueError(f'data.name: got {name!r}; allowed: {", ".join(self.DATASETS)} '
                       f'(for task={self.name})')
    self.check_vocab(mcfg, self.dataset.vocab_size)
    if mcfg.num_classes != self.dataset.num_classes:
      raise ValueError(f'model.num_classes: got {mcfg.num_classes}; allowed: '
                       f'{self.dataset.num_classes} (data.name={name!r})')
    self.source  # A missing dataset says how to build it.

  def _rows(self) -> dict:
    cls_id = self.dataset.vocab_size - 1 if self.config.model.pooling == 'cls' else None
    return dict(tokenize=self.dataset.tokenize, cls_id=cls_id, max_length=self.config.seq_len)

  def train_iterator(self, process_index=0, process_count=1):
    c = self.config
    return pipelines.classification_train(
        self.source['train'], seed=c.seed, **self._rows(),
        **self.shard(c.batch_size, process_index, process_count))

  def eval_sets(self, process_index=0, process_count=1):
    c = self.config
    split = inputs.eval_split(c, self.source)
    return {split: pipelines.classification_eval(
        self.source[split], max_examples=c.eval_batch_size * c.num_eval_batches,
        **self._rows(), **self.shard(c.eval_batch_size, process_index, process_count))}

  def dummy_batch(self, length):
    out = {'inputs': jnp.zeros((1, length), jnp.int32), 'label': jnp.zeros((1,), jnp.int32)}
    if self.dataset.image:
      out['position_rows'] = jnp.zeros((1, 3, length), jnp.int32)
    return out

  def model_inputs(self, batch):
    if 'position_rows' not in batch:
      return (batch['inputs'],), {}
    return (batch['inputs'],), {'position_rows': jnp.moveaxis(batch['position_rows'], 1, 0)}

  def labels_and_weights(self, batch):
    labels = batch['label']
    return labels, batch.get('weight', jnp.ones(labels.shape, jnp.float32))


class Matching(Classification):
  name = 'matching'
  model_kind = 'matcher'
  DATASETS = {'lra_retrieval': Dataset(_lra('retrieval_example'), _BYTES, 2)}

  def dummy_batch(self, length):
    z = jnp.zeros((1, length), jnp.int32)
    return {'inputs1': z, 'inputs2': z, 'label': jnp.zeros((1,), jnp.int32)}

  def model_inputs(self, batch):
    return (batch['inputs1'], batch['inputs2']), {}
