"""The contract between the trainer and a task.

A task is what an encoding is to attention: one class behind one registry
(``posjax.tasks``) that owns everything the trainer would otherwise branch on:

  model_kind                       which ``posjax.models`` model it trains
  check(mcfg)                      data and config checks, before anything is written
  train_iterator(pidx, pcount)     this process's checkpointable training batches
  eval_sets(pidx, pcount)          ``{name: [batches]}`` evaluated every eval step
  dummy_batch(length)              a batch of the right structure (initialisation)
  model_inputs(batch)              ``(args, kwargs)`` of ``model.apply``
  sums(logits, batch)              summed loss / correct / count (added over batches);
                                   rows with ``example_weight`` also sequence accuracy
  summarize(sums, suffix)          the reported metrics of those sums

An instance holds one experiment config; its data source is opened once and
shared by the checks and the pipelines.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax.numpy as jnp
import optax

from posjax.data import inputs

PAD = 0


class Task:
  """Base class: token-level next-token prediction defaults."""
  name: ClassVar[str] = ''
  model_kind: ClassVar[str] = 'decoder'

  def __init__(self, config):
    self.config = config

  # -- Data ------------------------------------------------------------------

  @functools.cached_property
  def builder(self):
    """The prepared TFDS dataset of ``config.data`` (found, or built, once)."""
    return inputs.builder(self.config)

  @functools.cached_property
  def source(self):
    return self.builder.as_data_source()

  def data_fingerprint(self) -> str:
    """Identifies the data's contents; saved with every checkpoint."""
    return inputs.fingerprint(self.builder)

  def check(self, mcfg) -> None:
    """Raises a one-line ``ValueError`` for data or fields the model can't use."""
    raise NotImplementedError

  def train_iterator(self, process_index: int = 0, process_count: int = 1):
    raise NotImplementedError

  def eval_sets(self, process_index: int = 0, process_count: int = 1) -> dict[Any, list]:
    raise NotImplementedError

  def shard(self, batch_size: int, process_index: int, process_count: int) -> dict:
    """Pipeline arguments of this process's share of a global batch."""
    return dict(batch_size=batch_size // process_count, process_index=process_index,
                process_count=process_count)

  def check_vocab(self, mcfg, need: int) -> None:
    if mcfg.vocab_size < need:
      raise ValueError(f'model.vocab_size: got {mcfg.vocab_size}; allowed: >= {need} '
                       f'(data.name={self.config.data.name!r})')

  # -- Model -----------------------------------------------------------------

  def dummy_batch(self, length: int) -> dict:
    z = jnp.zeros((1, length), jnp.int32)
    return {'inputs': z, 'targets': z, 'segment_ids': jnp.ones_like(z),
            'positions': jnp.arange(length, dtype=jnp.int32)[None],
            'weights': jnp.ones((1, length), jnp.float32)}

  def model_inputs(self, batch) -> tuple[tuple, dict]:
    return (batch['inputs'],), {'positions': batch['positions'],
                                'segment_ids': batch['segment_ids']}

  # -- Metrics ---------------------------------------------------------------

  def labels_and_weights(self, batch):
    labels, w = batch['targets'], batch.get('weights')
    if w is None:
      w = ((batch['segment_ids'] > 0) & (labels != PAD)).astype(jnp.float32)
    return labels, w

  def sums(self, logits, batch) -> dict:
    """Summed loss, correct predictions, item count and non-pad input tokens."""
    labels, w = self.labels_and_weights(batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) * w
    tokens = sum((batch[k] != PAD).sum() for k in ('inputs', 'inputs1', 'inputs2')
                 if k in batch)
    out = {'loss_sum': (losses * w).sum(), 'correct': correct.sum(), 'count': w.sum(),
           'tokens': tokens.astype(jnp.float32)}
    if 'example_weight' in batch:  # One example per row: right iff all its answers are.
      answered = w.sum(-1) > 0
      out['seq_correct'] = ((correct.sum(-1) == w.sum(-1)) & answered).sum().astype(jnp.float32)
      out['seq_count'] = answered.sum().astype(jnp.float32)
    return out

  def summarize(self, sums: dict, suffix: str = '') -> dict[str, float]:
    count = max(float(sums['count']), 1.0)
    out = {f'loss{suffix}': float(sums['loss_sum']) / count,
           f'accuracy{suffix}': float(sums['correct']) / count}
    if 'seq_count' in sums:
      out[f'sequence_accuracy{suffix}'] = (float(sums['seq_correct'])
                                           / max(float(sums['seq_count']), 1.0))
    return out
