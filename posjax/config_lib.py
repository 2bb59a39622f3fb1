"""Shared pieces of the LRA experiment configs (configs/lra_*.py)."""
from __future__ import annotations

import ml_collections

from posjax import encodings, train


def lra(arg, *, data: str, num_classes: int, vocab_size: int, seq_len: int, batch_size: int,
        num_train_steps: int, warmup_steps: int, eval_every_steps: int, eval_examples: int,
        learning_rate: float, schedule: str, weight_decay: float, grad_clip: float,
        model: dict, task: str = 'classification') -> ml_collections.ConfigDict:
  """An LRA encoder experiment: ``data`` from ``posjax.data.build`` in
  ``data.data_dir``; ``model`` overrides the encoder's fields. ``arg`` carries
  ``posenc``, ``size`` (the dataset build) and ``runlocal``."""
  c = train.base_config(arg.posenc)
  c.task = task
  c.data = dict(name=data, size=arg.size, data_dir='')
  c.seq_len = seq_len
  c.batch_size = c.eval_batch_size = batch_size
  c.num_train_steps, c.warmup_steps = num_train_steps, warmup_steps
  c.eval_every_steps = c.checkpoint_every_steps = eval_every_steps
  c.num_eval_batches = -(-eval_examples // batch_size)
  c.learning_rate, c.schedule = learning_rate, schedule
  c.weight_decay, c.grad_clip = weight_decay, grad_clip
  c.model.update(kind='matcher' if task == 'matching' else 'encoder_classifier',
                 vocab_size=vocab_size, num_classes=num_classes, max_len=seq_len,
                 dtype='float32', norm='layernorm', **model)
  if arg.runlocal:
    train.runlocal(c)
    c.seq_len = c.model.max_len = min(seq_len, 128)
    c.model.update(num_layers=min(c.model.num_layers, 2), model_dim=64, mlp_dim=128,
                   num_heads=min(c.model.num_heads, 4), dropout_rate=0.0)
  return c


def encoder_sweep() -> list[dict]:
  """Every registered encoding that works bidirectionally (the LRA comparison)."""
  return [{'model.posenc': name} for name in encodings.names()
          if not encodings.get(name).causal_only]
