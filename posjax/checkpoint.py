"""Orbax checkpoints: everything needed to resume, and params for analysis.

A checkpoint step holds three items: ``params``; ``train`` (optimizer state,
step and rng); ``data`` (the grain iterator's state, one file per process).
The experiment config is written once as ``<workdir>/config.json``.
"""
from __future__ import annotations

import collections
import json
import os
import signal

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'
CONFIG_FILE = 'config.json'

Analysis = collections.namedtuple('Analysis', ['config', 'params', 'step'])


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={'params': ocp.StandardCheckpointHandler(),
                     'train': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iter) -> None:
  """Saves params / optimizer / step / rng / data iterator at ``step``."""
  train = {k: v for k, v in state.items() if k != 'params'}
  mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state['params']),
      train=ocp.args.StandardSave(train),
      data=grain.checkpoint.CheckpointSave(data_iter)), force=True)
  mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, abstract_state: dict, data_iter,
            step: int | None = None):
  """Restores the latest (or ``step``) into ``abstract_state``'s shardings.

  Returns (state, step) or (None, None) when there is no checkpoint; the data
  iterator is restored in place.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None, None
  abstract_train = {k: v for k, v in abstract_state.items() if k != 'params'}
  out = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_state['params']),
      train=ocp.args.StandardRestore(abstract_train),
      data=grain.checkpoint.CheckpointRestore(data_iter)))
  state = dict(out['train'])
  state['params'] = out['params']
  return state, step


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


# Fields a resumed run must share with the run that wrote the checkpoints: they
# decide the shapes and meaning of the saved state. Steps, rates and logging may change.
RESUME_FIELDS = ('task', 'model', 'data', 'seq_len', 'batch_size', 'grad_accum_steps', 'seed')


def _flat(d, prefix=''):
  if isinstance(d, dict):
    return {k: v for key, val in d.items() for k, v in _flat(val, f'{prefix}{key}.').items()}
  return {prefix[:-1]: d}


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the differing fields when ``workdir`` holds
  checkpoints of an incompatible experiment (before anything is written)."""
  path, ckpts = os.path.join(workdir, CONFIG_FILE), checkpoint_dir(workdir)
  if not (os.path.exists(path) and os.path.isdir(ckpts) and os.listdir(ckpts)):
    return
  with open(path) as f:
    saved = _flat({k: v for k, v in json.load(f).items() if k in RESUME_FIELDS})
  now = _flat({k: v for k, v in json.loads(config.to_json_best_effort()).items()
               if k in RESUME_FIELDS})
  diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  if diff:
    shown = ', '.join(f'{k} ({saved.get(k)!r} -> {now.get(k)!r})' for k in diff[:6])
    raise ValueError(f'workdir: {workdir} holds checkpoints of a different experiment; '
                     f'differing fields: {shown}{" ..." if len(diff) > 6 else ""}; '
                     'allowed: the same config, or a new workdir')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_for_analysis(workdir: str, step: int | None = None) -> Analysis:
  """(config, params, step) restored on the CPU, without the optimizer."""
  from posjax import models, tasks  # Late import: keeps this module light.
  import flax.linen as nn
  config = load_config(workdir)
  model = models.build(models.ModelConfig.from_config(config.model))
  task = tasks.get(config.get('task', 'lm'))
  args, kwargs = task.model_inputs(task.dummy_batch(min(8, config.seq_len)))
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  shapes = jax.eval_shape(lambda k: nn.unbox(model.init(
      {'params': k}, *args, **kwargs, train=False)['params']), jax.random.key(0))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), shapes)
  mngr = ocp.CheckpointManager(
      checkpoint_dir(workdir),
      item_handlers={'params': ocp.StandardCheckpointHandler()})
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  out = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))
  mngr.close()
  return Analysis(config=config, params=out['params'], step=step)


class PreemptionFlag:
  """Set by SIGTERM; the train loop checkpoints and exits 0 when it sees it."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no signal handling.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
