"""Everything checkable about an experiment config before anything is written.

``validate(config)`` runs once per run (``loop.train_and_evaluate``): the
model config, the task's own data checks (``Task.check``), the mesh and
batches, steps, the optimizer and the profiler window. Every failure is a
one-line ``ConfigError`` ``<field>: got ...; allowed: ...``; the CLI turns it
(and ``InputError``, bad data found while building the pipelines) into exit 2.
"""
from __future__ import annotations

import math

import jax

from posjax import tasks
from posjax.training import optim, sharding

_POSITIVE = ('num_train_steps', 'seq_len', 'log_every_steps', 'eval_every_steps',
             'checkpoint_every_steps', 'keep_checkpoints', 'grad_accum_steps',
             'num_eval_batches', 'peer_timeout_seconds')


class ConfigError(ValueError):
  """A config field that cannot work, found before anything is written."""


class InputError(ValueError):
  """Bad data found while preparing a run, before anything is written."""


def validate(config):
  """``(ModelConfig, Task)`` of ``config``, or ConfigError."""
  try:
    return _validate(config)
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    raise ConfigError(str(e).strip('"\'')) from None


def _validate(config):
  from posjax import models
  mcfg = models.ModelConfig.from_config(config.model)
  task = tasks.for_config(config)
  if mcfg.kind != task.model_kind:
    raise ValueError(f'model.kind: got {mcfg.kind!r}; allowed: {task.model_kind} '
                     f'(for task={task.name!r})')
  _check_parallelism(config)
  _check_attention(mcfg)
  _check_steps(config, mcfg)
  _check_optimizer(config)
  task.check(mcfg)  # 'data.*' errors; a missing dataset says how to build it.
  return mcfg, task


def check_eval_sets(mcfg, eval_sets) -> None:
  """InputError when randomized positions (drawn at evaluation too) cannot
  cover the widest eval row: a sample needs that many distinct positions."""
  if not mcfg.randomized_positions:
    return
  widest = max((b['inputs'].shape[1] for bs in eval_sets.values() for b in bs), default=0)
  if widest > mcfg.max_random_position:
    raise InputError(f'model.max_random_position: got {mcfg.max_random_position}; allowed: '
                     f'>= {widest} (the widest eval row; randomized positions are also '
                     'drawn at evaluation)')


def _check_attention(mcfg) -> None:
  """A named fused kernel that cannot serve this config here: one line."""
  from posjax.models import config as model_config
  from posjax.models.kernels import vendor
  from posjax.models.kernels import tile_sizes
  if mcfg.attention not in vendor.PLATFORMS:
    return
  why = vendor.why_not(mcfg.attention, mcfg)
  if why is None:
    tile_sizes.tiles(mcfg, mcfg.attention, mcfg.max_len)  # A forced tile that cannot run.
  if why:
    here = [a for a in model_config.ATTENTIONS
            if a not in vendor.PLATFORMS or vendor.why_not(a, mcfg) is None]
    raise ValueError(f'model.attention: got {mcfg.attention!r}; allowed here: '
                     f'{", ".join(here)} ({why})')


def _check_parallelism(config) -> None:
  parallel = sharding.batch_parallelism(config.mesh, jax.device_count())  # Checks the mesh.
  sharding.normalize_rules(config.logical_axis_rules)
  procs = jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    b = config[name]
    if b <= 0 or b % parallel or b % procs:
      raise ValueError(f'{name}: got {b}; allowed: a positive multiple of '
                       f'data*fsdp={parallel} and of the process count {procs}')


def _check_steps(config, mcfg) -> None:
  for name in _POSITIVE:
    if name in config and int(config[name]) <= 0:  # (Configs saved before a field existed.)
      raise ValueError(f'{name}: got {config[name]!r}; allowed: a positive integer')
  if config.seq_len > mcfg.max_len:
    raise ValueError(f'seq_len: got {config.seq_len}; allowed: <= model.max_len='
                     f'{mcfg.max_len}')
  if int(config.get('schedule_steps') or 0) < 0:
    raise ValueError(f'schedule_steps: got {config.schedule_steps}; allowed: 0 '
                     '(= num_train_steps) or a positive integer')
  a, b = (int(x) for x in config.get('profile_steps') or (0, 0))
  if (a, b) != (0, 0) and not 0 < a <= b <= config.num_train_steps:
    raise ValueError(f'profile_steps: got ({a}, {b}); allowed: (0, 0) (off) or (a, b) '
                     f'with 0 < a <= b <= num_train_steps={config.num_train_steps}')


def _check_optimizer(config) -> None:
  steps = optim.schedule_steps(config)
  if config.warmup_steps < 0 or (config.schedule == 'cosine' and config.warmup_steps >= steps):
    raise ValueError(f'warmup_steps: got {config.warmup_steps}; allowed: 0 <= warmup_steps '
                     f'(< the schedule length {steps} for the cosine schedule)')
  if config.schedule not in optim.SCHEDULES:
    raise ValueError(f'schedule: got {config.schedule!r}; allowed: '
                     f'{", ".join(optim.SCHEDULES)}')
  lr = config.learning_rate
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
    raise ValueError(f'learning_rate: got {lr!r}; allowed: a finite number > 0')
  clip = config.grad_clip
  if not (isinstance(clip, (int, float)) and math.isfinite(clip) and clip >= 0):
    raise ValueError(f'grad_clip: got {clip!r}; allowed: a finite number >= 0 (0 = no clipping)')
