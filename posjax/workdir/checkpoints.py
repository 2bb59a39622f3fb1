"""Orbax checkpoints of a run: everything needed to resume, and params alone.

A checkpoint step holds four items: ``params``; ``train`` (optimizer state,
step and rng); ``data`` (the grain iterator's state, one file per process);
``config`` (the experiment config that wrote it, which decides whether a rerun
may resume it: ``posjax.workdir.run_config``). Every finished step gets a
checksum manifest (``posjax.workdir.integrity``).

Crash safety: Orbax writes each step into a temporary directory and renames it
when complete, so a run killed mid-save leaves only a ``*.orbax-checkpoint-tmp-*``
directory, which the next run's manager removes. A step that exists but does not
restore (truncated or missing files) is skipped with a one-line warning and the
previous step is used; the skipped steps are moved to
``<workdir>/unreadable_checkpoints/`` so the resumed run can save those steps again.
A step whose files differ from their checksums, or whose restored state holds
NaN/Inf, counts as unreadable.
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import shutil
import sys

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from posjax.workdir import integrity

CHECKPOINT_DIR = 'checkpoints'
UNREADABLE_DIR = 'unreadable_checkpoints'
_READ_ATTEMPTS = 5  # A reader beside a live run: rounds of steps that appeared meanwhile.


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def manager(workdir: str, config) -> ocp.CheckpointManager:
  _quiet_abandoned_io()
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=False,
      cleanup_tmp_directories=True)  # Left by a run killed while saving.
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options,
      item_handlers={'params': ocp.StandardCheckpointHandler(),
                     'train': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def save(mngr: ocp.CheckpointManager, step: int, state: dict, data_iter, config,
         data_fingerprint: str = '', pending_eval: bool = False) -> None:
  """Saves params / optimizer / step / rng / data iterator / config (with the
  data's fingerprint, and whether this step's evaluation is still to run) at
  ``step``, then its checksum manifest.

  A save that fails (a full disk, any OS error while writing) removes what it
  wrote of the step and raises SaveError naming the step and the newest intact one.
  """
  train = {k: v for k, v in state.items() if k != 'params'}
  intact = max((s for s in mngr.all_steps() if s != step), default=None)
  try:
    mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state['params']),
        train=ocp.args.StandardSave(train),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave({'config': _config_dict(config),
                                  'data_fingerprint': data_fingerprint,
                                  'pending_eval': pending_eval})), force=True)
    mngr.wait_until_finished()
    if jax.process_index() == 0:
      integrity.write_manifest(str(mngr.directory / str(step)))
  except Exception as e:  # Orbax and tensorstore wrap OS errors in many types.
    _discard(mngr, step)
    kept = f'step {intact} is intact' if intact is not None else 'no earlier step was saved'
    raise SaveError(f'checkpoint: step {step} was not saved in {mngr.directory} '
                    f'({_one_line(e)}); {kept}; allowed: free space (or fix the error) '
                    'and rerun the same command, which resumes') from None


class SaveError(RuntimeError):
  """A checkpoint step could not be written (the run stops; earlier steps stand)."""


def _discard(mngr: ocp.CheckpointManager, step: int) -> None:
  """Removes what a failed save wrote of ``step`` (final or temporary)."""
  if jax.process_index() == 0:
    for name in os.listdir(mngr.directory):
      if name == str(step) or name.startswith(f'{step}.orbax-checkpoint-tmp'):
        shutil.rmtree(mngr.directory / name, ignore_errors=True)
  try:
    mngr.reload()
  except Exception:  # A manager that cannot list its directory: the error is raised anyway.
    pass


class UnreadableCheckpointError(RuntimeError):
  """Every checkpoint step in the directory failed to restore."""


def _one_line(e: BaseException) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:200]}{"..." if len(text) > 200 else ""}'


# What tensorstore operations still in flight report once Orbax has closed the
# event loop of a failed save or restore: harmless echoes of the error raised.
_ABANDONED = ('Event loop is closed', 'cannot schedule new futures after shutdown')


def _abandoned(exc) -> bool:
  return ((isinstance(exc, RuntimeError) and str(exc) in _ABANDONED)
          or str(exc).startswith('Encountered error while reading array index'))


class _DropAbandoned:
  """A ``sys.unraisablehook`` / ``sys.excepthook`` that drops the reports of
  abandoned operations and passes every other one to the previous hook."""

  def __init__(self, previous, unraisable: bool):
    self.previous, self.unraisable = previous, unraisable

  def __call__(self, *args):
    exc = args[0].exc_value if self.unraisable else args[1]
    if not _abandoned(exc):
      self.previous(*args)


def _quiet_abandoned_io() -> None:
  """After a failed save or restore, tensorstore operations still in flight
  complete into Orbax's closed event loop: each prints a traceback ('Event loop
  is closed', from C++ callbacks through ``sys.excepthook`` or as unraisable) and
  their tasks and Orbax's signalling threads log the error again. The error
  raised (or the warning) says what happened; only those echoes are dropped."""
  if not isinstance(sys.unraisablehook, _DropAbandoned):
    sys.unraisablehook = _DropAbandoned(sys.unraisablehook, unraisable=True)
  if not isinstance(sys.excepthook, _DropAbandoned):
    sys.excepthook = _DropAbandoned(sys.excepthook, unraisable=False)
    std_logging.getLogger('asyncio').addFilter(lambda r: not r.getMessage().startswith(
        ('Future exception was never retrieved', 'Task exception was never retrieved')))
    # Orbax's background threads log the error they then raise in the caller, and
    # a reader's manager notes that it is read-only (its normal case).
    std_logging.getLogger('absl').addFilter(_not_an_orbax_echo)


def _not_an_orbax_echo(record) -> bool:
  message = record.getMessage()
  return not ('_SignalingThread.run() raised an exception' in message or message.startswith(
      ('CheckpointManagerOptions.read_only=True', 'Given directory is read only')))


def _newest_readable(mngr: ocp.CheckpointManager, restore_step, retry_new_steps: bool = False):
  """``(restore_step(s), s, skipped)`` for the newest step that restores.

  Steps that raise are skipped with a one-line warning each; ``(None, None, [])``
  when there are no steps; UnreadableCheckpointError when none restores. With
  ``retry_new_steps`` (a reader beside a live run, which may delete the step being
  read once it saved a newer one), steps that appeared meanwhile are tried too.
  """
  skipped, last, tried = [], None, set()
  for _ in range(_READ_ATTEMPTS if retry_new_steps else 1):
    for step in sorted(set(mngr.all_steps()) - tried, reverse=True):
      tried.add(step)
      try:
        return restore_step(step), step, skipped
      except Exception as e:  # Orbax, tensorstore and grain raise many types.
        _quiet_abandoned_io()
        last = _one_line(e)
        logging.warning('checkpoint step %d in %s is unreadable (%s); trying the '
                        'previous one', step, mngr.directory, last)
        skipped.append(step)
    if not retry_new_steps or not set(_steps_on_disk(mngr.directory)) - tried:
      break
    _beside_a_writer(mngr.reload)
  if skipped:
    raise UnreadableCheckpointError(
        f'checkpoints: no step of {sorted(skipped)} in {mngr.directory} restores '
        f'(last: {last}); allowed: a workdir with a readable checkpoint, or a new workdir')
  return None, None, []


def _beside_a_writer(fn):
  """``fn()`` (which lists the steps), again if a live run deleted a step while it
  was being listed."""
  for attempt in range(_READ_ATTEMPTS):
    try:
      return fn()
    except OSError:  # FileNotFoundError, NotADirectoryError: a step just removed.
      if attempt == _READ_ATTEMPTS - 1:
        raise


def _steps_on_disk(directory) -> list[int]:
  return [int(n) for n in os.listdir(directory) if n.isdigit()]


def _set_aside(mngr: ocp.CheckpointManager, steps) -> None:
  """Moves unreadable steps out of the manager's directory (kept for inspection)."""
  if not steps:
    return
  if jax.process_index() == 0:
    target = mngr.directory.parent / UNREADABLE_DIR
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
      dest = target / str(step)
      n = 1
      while dest.exists():
        dest, n = target / f'{step}.{n}', n + 1
      (mngr.directory / str(step)).rename(dest)
      logging.warning('moved unreadable checkpoint step %d to %s', step, dest)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('posjax_set_aside_unreadable_checkpoints')
  mngr.reload()


def restore(mngr: ocp.CheckpointManager, abstract_state: dict, data_iter,
            step: int | None = None):
  """Restores the newest readable step (or exactly ``step``) into
  ``abstract_state``'s shardings.

  Returns (state, step) or (None, None) when there is no checkpoint; the data
  iterator is restored in place. Newer steps that fail to restore are skipped
  with a warning and moved to ``<workdir>/unreadable_checkpoints``.
  """
  abstract_train = {k: v for k, v in abstract_state.items() if k != 'params'}

  def restore_step(s):
    integrity.verify(str(mngr.directory / str(s)))
    out = mngr.restore(s, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_state['params']),
        train=ocp.args.StandardRestore(abstract_train),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return _finite(dict(out['train'], params=out['params']))

  if step is not None:
    return restore_step(step), step
  state, step, skipped = _newest_readable(mngr, restore_step)
  _set_aside(mngr, skipped)
  return state, step


def _finite(state):
  """``state``, or DamagedCheckpointError naming its first NaN/Inf leaf."""
  bad = integrity.first_nonfinite(state)
  if bad is not None:
    raise integrity.DamagedCheckpointError(f'{bad} holds NaN/Inf')
  return state


def restore_params(workdir: str, abstract_params, step: int | None = None):
  """``(params, step)`` of the newest readable step (or ``step``) of ``workdir``,
  into ``abstract_params``' shapes and shardings; FileNotFoundError without one.
  Writes nothing: a missing run gets no ``checkpoints/`` directory."""
  ckpts = checkpoint_dir(workdir)
  if not os.path.isdir(ckpts):
    raise FileNotFoundError(f'no checkpoint in {ckpts}')
  mngr = _beside_a_writer(lambda: ocp.CheckpointManager(
      ckpts, options=ocp.CheckpointManagerOptions(create=False, read_only=True),
      item_handlers={'params': ocp.StandardCheckpointHandler()}))

  def restore_step(s):
    integrity.verify(str(mngr.directory / str(s)), items=('params',))
    return _finite(mngr.restore(s, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params)))['params'])

  _quiet_abandoned_io()
  try:
    if step is not None:
      params = restore_step(step)
    else:
      params, step, _ = _newest_readable(mngr, restore_step, retry_new_steps=True)
  finally:
    mngr.close()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {ckpts}')
  return params, step
