"""Training: ``train_and_evaluate(config, workdir)`` for every task of ``posjax.tasks``.

One jitted train step with explicit in/out shardings (the state is donated),
derived from the parameters' logical axis names and ``config.logical_axis_rules``.
The loop dispatches step n before reading step n-1's metrics, stops on a NaN
loss naming the step, evaluates at every ``config.eval_lengths`` in one pass,
and checkpoints every ``config.checkpoint_every_steps``, at the end and on
SIGTERM (then exits 0).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

from absl import logging
import ml_collections
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from posjax import checkpoint
from posjax import distributed
from posjax import sharding
from posjax import tasks
from posjax.data import inputs

SCHEDULES = ('cosine', 'rsqrt')


# ----------------------------------------------------------------------------
# Validation (before anything is written).

def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style config argument: ``'posenc=alibi,size=small,runlocal'``."""
  out = dict(defaults)
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    out[key.strip()] = value.strip() if value else True
  return ml_collections.ConfigDict(out)


def base_config(posenc: str = 'rope'):
  """The fields every experiment config shares, with defaults (see configs/)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.multihost = False
  c.task = 'lm'
  # Steps.
  c.num_train_steps = 20_000
  c.log_every_steps = 50
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3
  # Batches.
  c.batch_size = 64
  c.seq_len = 512
  c.eval_batch_size = 64
  c.num_eval_batches = 4
  c.eval_lengths = [512]
  # Optimizer.
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.schedule = 'cosine'  # cosine | rsqrt
  c.grad_clip = 1.0  # Global norm; 0 = no clipping.
  c.grad_accum_steps = 1
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  # Parallelism: mesh axis sizes (-1 fills the remaining devices) and the map
  # from logical axis names to mesh axes; unnamed logical axes are replicated.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  c.logical_axis_rules = [
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
      ('kv', None),
      ('length', None),
  ]
  # Model: exactly the fields of posjax.models.ModelConfig.
  c.model = ml_collections.ConfigDict(dict(
      kind='decoder', vocab_size=260, num_layers=6, num_heads=8, model_dim=512,
      mlp_dim=2048, max_len=512, dropout_rate=0.0, dtype='bfloat16', norm='rmsnorm',
      tied_embedding=True, posenc=posenc, posenc_args=ml_collections.ConfigDict(),
      attention='dense', block_size=128, randomized_positions=False,
      max_random_position=4096, num_classes=2, pooling='mean', pad_id=0))
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks steps, batches and data (``tiny``) to minutes on a laptop CPU."""
  if 'size' in c.data:
    c.data.size = 'tiny'
  c.num_train_steps, c.warmup_steps, c.log_every_steps = 60, 10, 10
  c.eval_every_steps = c.checkpoint_every_steps = 30
  c.batch_size, c.eval_batch_size, c.num_eval_batches = 16, 16, 1
  c.learning_rate = 1e-3
  c.model.dtype = 'float32'
  return c


class InputError(ValueError):
  """Bad data found while preparing a run, before anything is written."""


def validate_config(config):
  """Checks everything checkable without side effects; returns the ModelConfig."""
  from posjax import models
  mcfg = models.ModelConfig.from_config(config.model)
  task = tasks.for_config(config)
  if mcfg.kind != task.model_kind:
    raise ValueError(f'model.kind: got {mcfg.kind!r}; allowed: {task.model_kind} '
                     f'(for task={task.name!r})')
  n = jax.device_count()
  parallel = sharding.batch_parallelism(config.mesh, n)  # Validates the mesh.
  sharding.normalize_rules(config.logical_axis_rules)
  procs = jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    b = config[name]
    if b <= 0 or b % parallel or b % procs:
      raise ValueError(f'{name}: got {b}; allowed: a positive multiple of '
                       f'data*fsdp={parallel} and of the process count {procs}')
  for name in ('num_train_steps', 'seq_len', 'log_every_steps', 'eval_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints', 'grad_accum_steps',
               'num_eval_batches'):
    if int(config[name]) <= 0:
      raise ValueError(f'{name}: got {config[name]!r}; allowed: a positive integer')
  if config.seq_len > mcfg.max_len:
    raise ValueError(f'seq_len: got {config.seq_len}; allowed: <= model.max_len='
                     f'{mcfg.max_len}')
  if config.warmup_steps < 0 or (config.schedule == 'cosine'
                                 and config.warmup_steps >= config.num_train_steps):
    raise ValueError(f'warmup_steps: got {config.warmup_steps}; allowed: 0 <= warmup_steps '
                     f'(< num_train_steps={config.num_train_steps} for the cosine schedule)')
  if config.schedule not in SCHEDULES:
    raise ValueError(f'schedule: got {config.schedule!r}; allowed: '
                     f'{", ".join(SCHEDULES)}')
  if not config.learning_rate > 0:
    raise ValueError(f'learning_rate: got {config.learning_rate!r}; allowed: a number > 0')
  if config.get('task', 'lm') == 'lm' and (
      not config.eval_lengths or any(int(l) <= 0 for l in config.eval_lengths)):
    raise ValueError(f'eval_lengths: got {config.eval_lengths!r}; allowed: a '
                     'non-empty list of positive integers')
  if (config.get('task', 'lm') == 'lm' and mcfg.encoding_class.bounded_by_max_len
      and max(config.eval_lengths) > mcfg.max_len):
    raise ValueError(f'eval_lengths: got {max(config.eval_lengths)} with posenc='
                     f'{mcfg.posenc!r}; allowed: <= model.max_len={mcfg.max_len}')
  inputs.check(config, mcfg)  # Raises 'data.*' errors; a missing dataset says how to build it.
  return mcfg


# ----------------------------------------------------------------------------
# Optimizer, state and steps.

def make_schedule(config) -> optax.Schedule:
  # Schedules count optimizer updates: one per grad_accum_steps batches.
  steps = max(config.num_train_steps // config.grad_accum_steps, 1)
  warmup = config.warmup_steps // config.grad_accum_steps
  lr = config.learning_rate
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=min(warmup, steps), decay_steps=steps, end_value=0.1 * lr)
  # rsqrt: linear warmup to lr, then lr * sqrt(w / step); a warmup longer than
  # training (LRA Retrieval) just never reaches the peak.
  w = max(warmup, 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, w),
       lambda s: lr * jnp.sqrt(w / (s + w))], [w])


def make_optimizer(config) -> optax.GradientTransformation:
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity(),
      optax.adamw(make_schedule(config), b1=config.get('adam_b1', 0.9),
                  b2=config.get('adam_b2', 0.98),
                  weight_decay=config.get('weight_decay', 0.0),
                  mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)))
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx


def _boxed_init(model, tx, task, config, rng):
  """The boxed (logically annotated) train state."""
  args, kwargs = task.model_inputs(task.dummy_batch(config.seq_len))
  params = model.init({'params': rng}, *args, **kwargs, train=False)['params']
  return {'params': params, 'opt_state': tx.init(params),
          'step': jnp.zeros((), jnp.int32),
          'rng': jax.random.key_data(jax.random.key(config.seed + 1))}


def train_step(state, batch, *, model, task, tx, schedule, grad_accum_steps):
  rng = jax.random.wrap_key_data(state['rng'])
  k_dropout, k_positions = jax.random.split(jax.random.fold_in(rng, state['step']))
  args, kwargs = task.model_inputs(batch)

  def loss_fn(params):
    logits = model.apply({'params': params}, *args, **kwargs, train=True,
                         rngs={'dropout': k_dropout, 'positions': k_positions})
    sums = task.sums(logits, batch)
    return sums['loss_sum'] / jnp.maximum(sums['count'], 1.0), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  metrics = {'loss': loss, **sums,
             'grad_norm': optax.tree.norm(grads),
             'param_norm': optax.tree.norm(params),
             'learning_rate': schedule(state['step'] // grad_accum_steps)}
  new_state = {'params': params, 'opt_state': opt_state,
               'step': state['step'] + 1, 'rng': state['rng']}
  return new_state, metrics


def eval_step(params, batch, *, model, task):
  args, kwargs = task.model_inputs(batch)
  return task.sums(model.apply({'params': params}, *args, **kwargs, train=False), batch)


class Trainer:
  """Holds the mesh, model, shardings and jitted functions of one experiment."""

  def __init__(self, config, mcfg=None, devices=None):
    from posjax import models
    self.config = config
    self.mcfg = mcfg or models.ModelConfig.from_config(config.model)
    self.model = models.build(self.mcfg)
    self.task = tasks.for_config(config)
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.tx = make_optimizer(config)
    self.schedule = make_schedule(config)
    init = functools.partial(_boxed_init, self.model, self.tx, self.task, config)
    self.rng = jax.random.key(config.seed)
    with self._context(rules=False):
      boxed = jax.eval_shape(init, self.rng)
    self.rules = sharding.complete_rules(config.logical_axis_rules, boxed)
    self.state_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    batch_shardings = self.batch_sharding  # A prefix: every batch array, split on rows.
    replicated = sharding.replicated(self.mesh)
    self._init = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=self.state_shardings)
    self._train_step = jax.jit(
        functools.partial(train_step, model=self.model, task=self.task, tx=self.tx,
                          schedule=self.schedule,
                          grad_accum_steps=config.grad_accum_steps),
        in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=self.model, task=self.task),
        in_shardings=(self.state_shardings['params'], batch_shardings),
        out_shardings=replicated)

  def _context(self, rules: bool = True):
    # Initialisation runs without the rules: its shardings come from
    # ``out_shardings`` (and flax would constrain DenseGeneral's kernels
    # before they are reshaped); activations are constrained in the steps.
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    if rules:
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self):
    with self._context(rules=False):
      return self._init(self.rng)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  def train_step(self, state, batch):
    with self._context():
      return self._train_step(state, self.global_batch(batch))

  def evaluate(self, params, eval_sets) -> dict[str, float]:
    """Metrics of every eval set (one per length, or per split), in one pass."""
    results = {}
    with self._context():
      for name, batches in eval_sets.items():
        results[name] = [self._eval_step(params, self.global_batch(b)) for b in batches]
    out = {}
    for name, rs in jax.device_get(results).items():
      sums = {k: sum(float(r[k]) for r in rs) for k in rs[0]}
      out.update({f'eval/{k}': v for k, v in self.task.summarize(sums, f'@{name}').items()})
    return out


# ----------------------------------------------------------------------------
# Logging.

class MetricWriter:
  """TensorBoard event files and ``metrics.jsonl`` in the workdir (process 0)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(logdir=workdir)
      self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def write(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps({'step': step, **metrics}) + '\n')
    self.jsonl.flush()

  def close(self):
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


def _progress(step: int, total: int, metrics: dict[str, float]):
  if jax.process_index() != 0:
    return
  done = int(30 * step / total)
  line = (f'\r[{"#" * done}{"." * (30 - done)}] step {step}/{total}  '
          f'loss {metrics["train/loss"]:.4f}  '
          f'acc {metrics["train/accuracy"]:.3f}  '
          f'{metrics["train/tokens_per_sec"]:.0f} tok/s  '
          f'{metrics["train/step_time"] * 1e3:.0f} ms/step')
  sys.stderr.write(line)
  sys.stderr.flush()


# ----------------------------------------------------------------------------
# The loop.

def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains ``config``'s language model, writing everything under ``workdir``."""
  distributed.maybe_initialize(config)
  mcfg = validate_config(config)
  checkpoint.check_resumable(workdir, config)
  trainer = Trainer(config, mcfg)
  pidx, pcount = jax.process_index(), jax.process_count()
  try:  # Data problems (e.g. no document as long as an eval length) before any write.
    data_iter = inputs.train_iterator(config, pidx, pcount)
    eval_sets = inputs.eval_sets(config, pidx, pcount)
  except ValueError as e:
    raise InputError(str(e)) from None
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  checkpoint.save_config(workdir, config)

  mngr = checkpoint.manager(workdir, config)
  state, start = checkpoint.restore(mngr, trainer.abstract_state, data_iter)
  if state is None:
    state, start = trainer.init_state(), 0
  elif jax.process_index() == 0:
    sys.stderr.write(f'resumed from step {start} ({checkpoint.checkpoint_dir(workdir)})\n')
  writer = MetricWriter(workdir)
  total = config.num_train_steps
  final: dict[str, float] = {}
  window: list[dict[str, Any]] = []
  last_log = time.perf_counter()
  pending = None  # (step, metrics on device) of the previous step.

  def consume(step, metrics_dev):
    nonlocal last_log, window
    m = jax.device_get(metrics_dev)
    if not np.isfinite(m['loss']):
      raise FloatingPointError(f'step {step}: loss is {float(m["loss"])} '
                               '(NaN/Inf); stopping')
    window.append(m)
    if step % config.log_every_steps == 0 or step == total:
      now = time.perf_counter()
      elapsed, n = now - last_log, len(window)
      sums = {k: sum(float(w[k]) for w in window) for k in ('loss_sum', 'correct', 'count')}
      out = {f'train/{k}': v for k, v in trainer.task.summarize(sums).items()}
      out.update({
          'train/grad_norm': float(window[-1]['grad_norm']),
          'train/param_norm': float(window[-1]['param_norm']),
          'train/learning_rate': float(window[-1]['learning_rate']),
          'train/tokens_per_sec': float(sum(w['tokens'] for w in window)) / elapsed,
          'train/step_time': elapsed / n})
      writer.write(step, out)
      _progress(step, total, out)
      final.update(out)
      window, last_log = [], now

  try:
    with distributed.Preemption(mngr) as preempt:
      for step in range(start + 1, total + 1):  # ``step`` = steps done after it.
        batch = next(data_iter)
        state, metrics = trainer.train_step(state, batch)
        if pending is not None:
          consume(*pending)
        pending = (step, metrics)
        if step % config.eval_every_steps == 0 or step == total:
          consume(*pending)
          pending = None
          ev = trainer.evaluate(state['params'], eval_sets)
          writer.write(step, ev)
          final.update(ev)
          if jax.process_index() == 0:
            sys.stderr.write(f'\nstep {step} eval: ' + '  '.join(
                f'loss@{l} {ev[f"eval/loss@{l}"]:.4f}' for l in eval_sets) + '\n')
        stop = preempt.reached(step)
        if step % config.checkpoint_every_steps == 0 or step == total or stop:
          if pending is not None:
            consume(*pending)
            pending = None
          checkpoint.save(mngr, step, state, data_iter)
        if stop:
          logging.warning('SIGTERM: saved a checkpoint at step %d; exiting', step)
          writer.close()
          mngr.close()
          sys.stderr.write(f'\nSIGTERM: checkpoint saved at step {step}\n')
          sys.exit(0)
      if pending is not None:
        consume(*pending)
  finally:
    if jax.process_index() == 0:
      sys.stderr.write('\n')
  if not any(k.startswith('eval/') for k in final):  # Resumed a finished run.
    final.update(trainer.evaluate(state['params'], eval_sets))
  writer.close()
  mngr.close()
  final['step'] = total
  return final
