"""``sequence``: a decoder over ``inputs SEP targets`` trained on the answer
tokens only (synthetic length generalisation, ``posjax.data.synthetic``);
evaluated at every test length and on the training lengths (``@in_distribution``),
with sequence accuracy (all answers right)."""
from __future__ import annotations

import functools

from posjax.data import builders, pipelines, synthetic
from posjax.tasks.base import Task


IN_DISTRIBUTION = 'in_distribution'  # The eval set of the training lengths.
EVAL_WIDTH_MULTIPLE = 32  # Eval rows padded to this: a compile per 32 tokens, not per length.


class Sequence(Task):
  name = 'sequence'
  model_kind = 'decoder'

  def check(self, mcfg) -> None:
    names = tuple(builders.SYNTHETIC_BUILDERS)
    if self.config.data.name not in names:
      raise ValueError(f'data.name: got {self.config.data.name!r}; allowed: '
                       f'{", ".join(names)} (for task=sequence)')
    self.check_vocab(mcfg, synthetic.VOCAB_SIZE)
    self.source  # A missing dataset says how to build it.
    shortest = min(e['inputs'].size + e['targets'].size for e in self.split('train'))
    if shortest > self.config.seq_len:  # (Packing skips rows longer than seq_len.)
      raise ValueError(f'seq_len: got {self.config.seq_len}; allowed: >= {shortest} (no '
                       f'training example of data.name={self.config.data.name!r} fits)')

  @functools.cache
  def split(self, name: str) -> list[dict]:
    """The split's examples, decoded once: synthetic splits are small, and TFDS
    decoding per read (~0.5 ms an example) would starve training."""
    src = self.source[name]
    return [src[i] for i in range(len(src))]

  def train_iterator(self, process_index=0, process_count=1):
    c = self.config
    return pipelines.sequence_train(
        self.split('train'), max_length=c.seq_len, seed=c.seed,
        **self.shard(c.batch_size, process_index, process_count))

  def eval_sets(self, process_index=0, process_count=1):
    """Every test length, and ``in_distribution``: the training lengths' first
    examples together (the same count per length)."""
    c = self.config
    ev = functools.partial(
        pipelines.sequence_eval, max_examples_per_length=c.eval_batch_size * c.num_eval_batches,
        width_multiple=EVAL_WIDTH_MULTIPLE,
        **self.shard(c.eval_batch_size, process_index, process_count))
    train = ev(self.split('train'))
    return {**ev(self.split('test')),
            IN_DISTRIBUTION: [b for n in sorted(train) for b in train[n]]}
