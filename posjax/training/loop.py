"""Training: ``train_and_evaluate(config, workdir)`` for every task of ``posjax.tasks``.

The config is validated once (``posjax.training.validation``) and checked against the
workdir's checkpoints before anything is written. The loop dispatches step n
before reading step n-1's metrics, stops on a NaN loss naming the step,
evaluates every ``eval_every_steps`` (every eval set in one pass), checkpoints
every ``checkpoint_every_steps``, at the end and when preempted (then exits 0),
and can trace ``profile_steps`` with ``jax.profiler``.
"""
from __future__ import annotations

import copy
import os
import shutil
import sys
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from posjax.workdir import checkpoints

from posjax.training import distributed, memory, metrics, optim, validation
from posjax.training.steps import Trainer
from posjax.training.validation import ConfigError, InputError
from posjax.workdir import run_config
from posjax.workdir.lock import Lock, check_usable

PROFILE_DIR = 'profile'
# What must be finite after every step, in the order it is computed.
_WATCHED = (('loss', 'loss'), ('grad_norm', 'the gradient norm'),
            ('update_norm', 'the update norm'), ('param_norm', 'the parameter norm'))


def prepare(config, workdir: str):
  """``(config, ModelConfig, Task)`` after every check that writes nothing.

  The returned config has ``schedule_steps`` resolved: a resumed run keeps the
  schedule it was started with unless ``schedule_steps`` is set explicitly.
  """
  mcfg, task = validation.validate(config)
  try:
    check_usable(workdir)
    saved = run_config.check_resumable(workdir, config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config = copy.deepcopy(config)
  if not config.get('schedule_steps'):
    with config.unlocked():
      config.schedule_steps = optim.schedule_steps(saved if saved is not None else config)
  return config, mcfg, task


def _pipelines(task):
  pidx, pcount = jax.process_index(), jax.process_count()
  try:  # Data problems (e.g. no document as long as an eval length) before any write.
    return task.train_iterator(pidx, pcount), task.eval_sets(pidx, pcount)
  except ValueError as e:
    raise InputError(str(e)) from None


def _iterator_for_changed_data(task, workdir: str, step: int, data_iter):
  """The restored iterator, or a fresh one (with a one-line warning) when the
  data changed since ``step`` was saved: the old position means nothing there."""
  saved = run_config.saved_data_fingerprint(workdir, step)
  if not saved or saved == task.data_fingerprint():
    return data_iter
  logging.warning('data: the dataset changed since step %d was saved (fingerprint %s -> %s); '
                  'the data iterator restarts at the beginning of the new data', step, saved,
                  task.data_fingerprint())
  return _pipelines(task)[0]


def _say(text: str) -> None:
  if jax.process_index() == 0:
    sys.stderr.write(text)
    sys.stderr.flush()


class _Profiler:
  """A ``jax.profiler`` trace of steps ``profile_steps = (a, b)`` into
  ``<workdir>/profile`` (TensorBoard's profile plugin or Perfetto)."""

  def __init__(self, config, workdir: str):
    self.first, self.last = (int(x) for x in config.get('profile_steps') or (0, 0))
    self.dir = os.path.join(workdir, PROFILE_DIR)
    self.active = False

  def before(self, step: int) -> None:
    if step == self.first:
      jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step == self.last:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      _say(f'\nprofile of steps {self.first}-{self.last}: {self.dir}\n')


class _Loop:
  """The train loop's state and its named helpers (log, evaluate, checkpoint)."""

  def __init__(self, config, trainer: Trainer, mngr, data_iter, eval_sets, workdir: str,
               start: int):
    self.config, self.trainer, self.mngr = config, trainer, mngr
    self.data_iter, self.eval_sets = data_iter, eval_sets
    self.writer = metrics.MetricWriter(workdir, start)
    self.profiler = _Profiler(config, workdir)
    self.final: dict[str, float] = {}
    self.window: list[dict[str, Any]] = []
    self.last_log = time.perf_counter()
    self.pending = None  # (step, metrics on device) of the previous step.
    self.eval_abandoned = False  # A stop came during this step's evaluation.

  def flush(self) -> None:
    """Reads the pending step's metrics (a NaN loss stops the run)."""
    if self.pending is None:
      return
    step, metrics_dev = self.pending
    self.pending = None
    m = jax.device_get(metrics_dev)
    for key, what in _WATCHED:  # A non-finite step is never logged or saved.
      if not np.isfinite(m[key]):
        raise FloatingPointError(f'step {step}: {what} is {float(m[key])} (NaN/Inf); '
                                 'stopping before it is saved')
    self.window.append(m)
    if step % self.config.log_every_steps == 0 or step == self.config.num_train_steps:
      self.log(step)

  def log(self, step: int) -> None:
    now = time.perf_counter()
    elapsed, w = now - self.last_log, self.window
    sums = {k: sum(float(x[k]) for x in w) for k in ('loss_sum', 'correct', 'count')}
    out = {f'train/{k}': v for k, v in self.trainer.task.summarize(sums).items()}
    out.update({f'train/{k}': float(w[-1][k])
                for k in ('grad_norm', 'update_norm', 'param_norm', 'learning_rate')})
    out['train/tokens_per_sec'] = float(sum(x['tokens'] for x in w)) / elapsed
    out['train/step_time'] = elapsed / len(w)
    self.writer.write(step, out)
    metrics.progress(step, self.config.num_train_steps, out)
    self.final.update(out)
    self.window, self.last_log = [], now

  def evaluate(self, step: int, state, stop=None) -> None:
    """Evaluates, or abandons the evaluation when ``stop()`` turns True (a
    preemption must not wait for it): the step is then saved as still to be
    evaluated, and the evaluation runs first after the resume."""
    self.flush()
    ev = self.trainer.evaluate(state['params'], self.eval_sets, stop)
    self.eval_abandoned = ev is None
    if ev is None:
      _say(f'\nstep {step} eval: abandoned to stop; it runs first after the resume\n')
      return
    self.writer.write(step, ev)
    self.final.update(ev)
    _say(f'\nstep {step} eval: ' + '  '.join(
        f'loss@{n} {ev[f"eval/loss@{n}"]:.4f}' for n in self.eval_sets) + '\n')

  def checkpoint(self, step: int, state) -> None:
    self.flush()
    checkpoints.save(self.mngr, step, state, self.data_iter, self.config,
                     self.trainer.task.data_fingerprint(), pending_eval=self.eval_abandoned)

  def run(self, state, start: int, evaluate_first: bool = False):
    """Steps ``start + 1 .. num_train_steps``; ``evaluate_first``: the restored
    step ``start`` was saved before its evaluation finished."""
    c, total = self.config, self.config.num_train_steps
    with distributed.Preemption(self.mngr) as preempt:
      if evaluate_first:
        self.evaluate(start, state, lambda: preempt.reached(start))
        if self.eval_abandoned:  # Step ``start`` is saved, still to be evaluated.
          self.stop(preempt, start)
      for step in range(start + 1, total + 1):  # ``step`` = steps done after it.
        self.profiler.before(step)
        state, step_metrics = self.trainer.train_step(state, next(self.data_iter))
        self.flush()
        self.pending = (step, step_metrics)
        self.profiler.after(step, state)
        if step % c.eval_every_steps == 0 or step == total:
          self.evaluate(step, state, lambda: preempt.reached(step))
        stop = self.eval_abandoned or preempt.reached(step)
        if step % c.checkpoint_every_steps == 0 or step == total or stop:
          self.checkpoint(step, state)
        if stop:
          self.stop(preempt, step)
      self.flush()
    return state

  def stop(self, preempt, step: int) -> None:
    """Exits after a preemption (SIGTERM, Ctrl-C) with step ``step`` saved."""
    self.close()
    logging.warning('preempted: saved a checkpoint at step %d; exiting', step)
    _say(f'\nstopped by {preempt.signal_name}: checkpoint saved at step {step}\n')
    sys.exit(preempt.exit_code)

  def close(self) -> None:
    self.writer.close()
    self.mngr.close()


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains ``config``'s model, writing everything under ``workdir``."""
  try:
    distributed.maybe_initialize(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  config, mcfg, task = prepare(config, workdir)
  trainer = Trainer(config, mcfg, task)
  data_iter, eval_sets = _pipelines(task)
  validation.check_eval_sets(mcfg, eval_sets)
  init_params = _init_from(config, trainer, workdir)
  workdir = os.path.abspath(workdir)
  before = os.listdir(workdir) if os.path.isdir(workdir) else None
  os.makedirs(workdir, exist_ok=True)
  lock = Lock(workdir)
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except ValueError as e:
      raise ConfigError(str(e)) from None
  try:
    with distributed.PeerWatch(config):
      return _run(config, trainer, data_iter, eval_sets, workdir, init_params)
  except (ConfigError, InputError, memory.ResourceError):
    _undo_new_run(workdir, before)
    raise
  finally:
    lock.release()


def _undo_new_run(workdir: str, before: list[str] | None) -> None:
  """A run refused before it saved anything (the step does not fit, ...) leaves
  its workdir as it found it: what this run created goes, a resumed run's stays."""
  if jax.process_index() != 0 or run_config.latest_step(workdir) is not None:
    return
  if before is None:
    shutil.rmtree(workdir, ignore_errors=True)
    return
  for name in set(os.listdir(workdir)) - set(before):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)


def _init_from(config, trainer: Trainer, workdir: str):
  """Parameters of ``config.init_from``'s newest checkpoint for a new run (a
  fine-tune: fresh optimizer and schedule), None otherwise."""
  source = config.get('init_from') or ''
  if not source or run_config.check_resumable(workdir, config) is not None:
    return None  # A resumed run continues from its own checkpoints.
  try:
    params, step = checkpoints.restore_params(source, trainer.abstract_state['params'])
  except Exception as e:  # Orbax raises many types for a tree that does not fit.
    cause = ' '.join(str(e).split()).split('; allowed:')[0]  # Its own advice does not apply.
    raise ConfigError(f'init_from: cannot initialise from {source} ({type(e).__name__}: '
                      f'{cause[:160]}{"..." if len(cause) > 160 else ""}); allowed: a workdir '
                      'whose checkpoints have this model\'s parameter shapes') from None
  _say(f'initialised from {source} (step {step})\n')
  return params


def _run(config, trainer: Trainer, data_iter, eval_sets, workdir: str,
         init_params=None) -> dict[str, float]:
  """Restores (or initialises) the state and runs the loop in the locked workdir."""
  run_config.save_config(workdir, config)
  mngr = checkpoints.manager(workdir, config)
  state, start = checkpoints.restore(mngr, trainer.abstract_state, data_iter)
  if state is None:
    state, start = trainer.init_state(), 0
    if init_params is not None:
      state['params'] = init_params
  else:
    _say(f'resumed from step {start} ({checkpoints.checkpoint_dir(workdir)})\n')
    data_iter = _iterator_for_changed_data(trainer.task, workdir, start, data_iter)
  loop = _Loop(config, trainer, mngr, data_iter, eval_sets, workdir, start)
  try:
    state = loop.run(state, start, start > 0 and run_config.pending_eval(workdir, start))
  finally:
    _say('\n')
  if not any(k.startswith('eval/') for k in loop.final):  # Resumed a finished run.
    loop.final.update(trainer.evaluate(state['params'], eval_sets))
  loop.close()
  loop.final['step'] = config.num_train_steps
  return loop.final

