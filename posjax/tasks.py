"""What a model is trained on: how a batch becomes a loss and metric sums.

A task turns a batch (a dict of arrays) into model inputs, sums of per-item
losses and correct predictions (summed, so the trainer can add them across
batches and devices), and a summary of those sums. The trainer never branches
on the kind of data; it asks the task.

  lm               next-token prediction over packed text; bits per byte
                   (bits per token with a SentencePiece tokenizer)
  sequence         next-token prediction where ``weights`` marks the answer
                   tokens (synthetic length generalisation); adds
                   sequence accuracy (every answer token right)
  classification   one label per example (LRA ListOps / Text / Image / Pathfinder)
  matching         one label per pair of documents (LRA Retrieval)
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import optax

PAD = 0


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  model_kind: str
  unit: str = 'byte'  # What an LM token is: bits_per_<unit>.

  @property
  def per_example(self) -> bool:
    return self.model_kind in ('encoder_classifier', 'matcher')

  def dummy_batch(self, length: int) -> dict:
    z = jnp.zeros((1, length), jnp.int32)
    if self.model_kind == 'matcher':
      return {'inputs1': z, 'inputs2': z, 'label': jnp.zeros((1,), jnp.int32)}
    if self.model_kind == 'encoder_classifier':
      return {'inputs': z, 'label': jnp.zeros((1,), jnp.int32)}
    return {'inputs': z, 'targets': z, 'segment_ids': jnp.ones_like(z),
            'positions': jnp.arange(length, dtype=jnp.int32)[None],
            'weights': jnp.ones((1, length), jnp.float32)}

  def model_inputs(self, batch) -> tuple[tuple, dict]:
    """(args, kwargs) of ``model.apply`` / ``model.init`` for a batch."""
    if self.model_kind == 'matcher':
      return (batch['inputs1'], batch['inputs2']), {}
    if self.model_kind == 'encoder_classifier':
      return (batch['inputs'],), {}
    return (batch['inputs'],), {'positions': batch['positions'],
                                'segment_ids': batch['segment_ids']}

  def sums(self, logits, batch) -> dict:
    """Summed loss, correct predictions and item count (+ sequence accuracy)."""
    if self.per_example:
      labels = batch['label']
      w = batch.get('weight', jnp.ones(labels.shape, jnp.float32))
    else:
      labels = batch['targets']
      w = batch.get('weights')
      if w is None:
        w = ((batch['segment_ids'] > 0) & (labels != PAD)).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, -1) == labels) * w
    inputs = [batch[k] for k in ('inputs', 'inputs1', 'inputs2') if k in batch]
    out = {'loss_sum': (losses * w).sum(), 'correct': correct.sum(), 'count': w.sum(),
           'tokens': sum((x != PAD).sum() for x in inputs).astype(jnp.float32)}
    if self.name == 'sequence':  # A row (one unpacked example) is right if all answers are.
      answered = w.sum(-1) > 0
      out['seq_correct'] = ((correct.sum(-1) == w.sum(-1)) & answered).sum().astype(jnp.float32)
      out['seq_count'] = answered.sum().astype(jnp.float32)
    return out

  def summarize(self, sums: dict, suffix: str = '') -> dict[str, float]:
    count = max(float(sums['count']), 1.0)
    loss = float(sums['loss_sum']) / count
    out = {f'loss{suffix}': loss, f'accuracy{suffix}': float(sums['correct']) / count}
    if self.name == 'lm':
      out[f'perplexity{suffix}'] = math.exp(min(loss, 50.0))
      out[f'bits_per_{self.unit}{suffix}'] = loss / math.log(2)
    if 'seq_count' in sums:
      out[f'sequence_accuracy{suffix}'] = float(sums['seq_correct']) / max(float(sums['seq_count']), 1.0)
    return out


TASKS = {'lm': Task('lm', 'decoder'), 'sequence': Task('sequence', 'decoder'),
         'classification': Task('classification', 'encoder_classifier'),
         'matching': Task('matching', 'matcher')}


def get(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'task: got {name!r}; allowed: {", ".join(TASKS)}')
  return TASKS[name]


def for_config(config) -> Task:
  """The task of an experiment config (an LM's unit follows ``data.tokenizer``)."""
  task = get(config.get('task', 'lm'))
  if task.name == 'lm' and config.data.get('tokenizer', 'bytes') not in ('', 'bytes'):
    task = dataclasses.replace(task, unit='token')
  return task
