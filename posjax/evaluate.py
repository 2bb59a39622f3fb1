"""Evaluates a trained run's params under a changed config (zero-shot changes).

  python -m posjax.evaluate --config=configs/lm.py:posenc=rope,runlocal \
      --config.model.posenc_args.scaling.type=yarn --config.model.posenc_args.scaling.factor=4 \
      --config.eval_lengths=128,512 --from_workdir=/tmp/lm_rope --workdir=/tmp/lm_rope_yarn

The newest readable checkpoint of ``--from_workdir`` (or ``--step=N``) is restored
into the model of ``--config``, which must have the same parameter shapes (a
different RoPE scaling, other evaluation lengths or data: anything that needs no
training), and evaluated on every eval set of the config. ``<workdir>/metrics.jsonl``
gets one record at the restored step with the keys a training run's evaluation
logs, ``<workdir>/config.json`` the config, and the results are printed as
``posjax.main`` prints them. The flags are ``posjax.main``'s, plus
``--from_workdir`` and ``--step``.

Order: every input is checked (the config; ``--from_workdir`` is a run with that
step and these parameter shapes; ``--workdir`` is usable, lies apart from
``--from_workdir``, holds no training run and is not in use), the params are restored,
and only then is ``--workdir`` created and locked (``posjax.workdir.lock``, the
trainer's lock: an evaluation and a training run never share a workdir) and the
evaluation run. Any bad input is one line ``error: ...; allowed: ...`` and exit 2
with nothing written anywhere. ``--from_workdir`` is only read. A ``--workdir``
that a previous evaluation wrote (no checkpoints, no training metrics) is reused:
its results are replaced.
"""
import contextlib
import glob
import json
import os
import shutil
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from posjax import main as posjax_main

_FROM = flags.DEFINE_string('from_workdir', None,
                            'The trained run whose params are evaluated (only read).')
_STEP = flags.DEFINE_string('step', None, 'The checkpoint step of --from_workdir to '
                            'evaluate (default: the newest readable one).')
_SOURCE = 'the workdir of a trained posjax run (config.json and checkpoints/<step>/)'
_TARGET = ('a new directory, or one a previous posjax.evaluate wrote (its results are '
           'replaced), apart from --from_workdir (not it, inside it or above it)')
_RESULTS = ('metrics.jsonl', 'events.out.tfevents.*')  # What a rerun replaces.


def _error(message: str):
  from posjax.training import validation
  return validation.InputError(message)


def _cause(e: BaseException, limit: int = 200) -> str:
  """``e`` as a short clause: one line, its own ``; allowed: ...`` cut off, then
  shortened (never in the middle of the message built around it)."""
  text = ' '.join(str(e).split()).split('; allowed:')[0]
  text = f'{type(e).__name__}: {text}' if not isinstance(e, ValueError) else text
  return text if len(text) <= limit else text[:limit].rstrip() + '...'


def _steps(ckpts: str) -> list[int]:
  try:
    return sorted(int(n) for n in os.listdir(ckpts) if n.isdigit())
  except OSError:  # No such directory, or not one.
    return []


def check_source(source: str, step: str | None) -> int | None:
  """The step ``--step`` names (None: the newest readable) after checking that
  ``source`` is a run with checkpoints; reads only."""
  from posjax.workdir import checkpoints, run_config
  path = os.path.abspath(source)
  if not os.path.exists(path):
    raise _error(f'--from_workdir: {path} does not exist; allowed: {_SOURCE}')
  if not os.path.isdir(path):
    raise _error(f'--from_workdir: {path} is a file; allowed: {_SOURCE}')
  ckpts = checkpoints.checkpoint_dir(path)
  if not os.path.isdir(ckpts) and not os.path.isfile(os.path.join(path,
                                                                   run_config.CONFIG_FILE)):
    raise _error(f'--from_workdir: {path} is not a posjax run (no {run_config.CONFIG_FILE}, '
                 f'no checkpoints/); allowed: {_SOURCE}')
  steps = _steps(ckpts)
  if not steps:
    raise _error(f'--from_workdir: {path} holds no checkpoint step yet; allowed: {_SOURCE} '
                 '(a run saves every checkpoint_every_steps and at its end)')
  if step is None:
    return None
  listed = ', '.join(map(str, steps))
  if not step.strip().isdigit() or int(step) not in steps:
    raise _error(f'--step: got {step!r}, not a checkpoint step of {path}; allowed: '
                 f'{listed} (or no --step: the newest readable)')
  return int(step)


def _training_run(path: str) -> str:
  """Why ``path`` holds (part of) a training run, '' if it does not."""
  from posjax.workdir import checkpoints
  steps = _steps(checkpoints.checkpoint_dir(path))
  if steps:
    return f'holds checkpoints of a training run (steps {", ".join(map(str, steps))})'
  try:
    with open(os.path.join(path, 'metrics.jsonl'), 'rb') as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if isinstance(record, dict) and any(str(k).startswith('train/') for k in record):
          return 'holds the metrics of a training run (train/ records in metrics.jsonl)'
  except OSError:  # None, or not a file.
    pass
  return ''


def check_target(workdir: str, source: str, locked: bool = False) -> None:
  """Refuses a ``workdir`` evaluate must not write (``locked``: its lock is this
  process's own); reads only."""
  from posjax.workdir import lock
  path = os.path.abspath(workdir)
  try:
    lock.check_usable(path)
  except ValueError as e:
    what, _, allowed = str(e).partition('; allowed: ')
    raise _error(f'--{what}; allowed: {_TARGET if " is a file" in what else allowed}') from None
  real, src = os.path.realpath(path), os.path.realpath(source)
  if real == src:
    raise _error(f'--workdir: {path} is --from_workdir (the run evaluated would lose its '
                 f'metrics.jsonl and config.json); allowed: {_TARGET}')
  if os.path.commonpath([real, src]) in (real, src):
    inner = 'inside' if os.path.commonpath([real, src]) == src else 'a parent of'
    raise _error(f'--workdir: {path} is {inner} --from_workdir {src}; allowed: {_TARGET}')
  if os.path.isdir(path) and (why := _training_run(path)):
    raise _error(f'--workdir: {path} {why}; allowed: {_TARGET}')
  if not locked and os.path.isdir(path) and lock.in_use(path):
    try:
      with open(os.path.join(path, lock.LOCK_FILE), errors='replace') as f:
        holder = f.read(200).strip() or 'another process'
    except OSError:
      holder = 'another process'
    raise _error(f'--workdir: {path} is in use by {holder}; allowed: one run per workdir '
                 '(wait for it or stop it, or use another --workdir)')


def _flat_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, 'shape') and not isinstance(x, dict))[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in p): tuple(x.shape) for p, x in leaves}


def _config_hint(source: str, step: int, config) -> str:
  """' (its config differs in task ..., model.model_dim 32 vs 64)', or ''."""
  from posjax.workdir import run_config
  try:
    saved = run_config.step_config(source, step) or run_config.load_config(source)
  except (OSError, ValueError):
    return ''
  def flatten(d, prefix=''):
    if isinstance(d, dict):
      return {k: v for key, val in d.items() for k, v in flatten(val, f'{prefix}{key}.').items()}
    return {prefix[:-1]: d}

  flat = {name: flatten({k: c.get(k) for k in ('task', 'model')}) for name, c in (
      ('saved', saved.to_dict()), ('now', json.loads(config.to_json_best_effort())))}
  keys = sorted((k for k in set(flat['saved']) | set(flat['now'])
                 if flat['saved'].get(k) != flat['now'].get(k) and 'posenc_args' not in k),
                key=lambda k: (k != 'task', k))
  if not keys:
    return ''
  shown = ', '.join(f'{k} {flat["saved"].get(k)!r} vs {flat["now"].get(k)!r}' for k in keys[:4])
  return f' (its config differs in {shown}{" ..." if len(keys) > 4 else ""})'


def check_shapes(source: str, step: int | None, abstract_params, config) -> None:
  """Refuses params whose saved shapes (read from the checkpoint's metadata, so no
  restore fails) differ from ``abstract_params``'. A step whose metadata does not
  read is left to the restore (which skips damaged steps)."""
  import orbax.checkpoint as ocp
  from etils import epath
  from posjax.workdir import checkpoints
  ckpts = checkpoints.checkpoint_dir(source)
  # A damaged step's metadata read fails with tensorstore reads in flight: their
  # echoes ('Event loop is closed' tracebacks) are dropped as after a failed restore.
  checkpoints._quiet_abandoned_io()  # pylint: disable=protected-access
  for s in [step] if step is not None else reversed(_steps(ckpts)):
    try:
      saved = ocp.StandardCheckpointHandler().metadata(epath.Path(ckpts) / str(s) / 'params')
      saved = _flat_shapes(saved.tree)
      break
    except Exception:  # pylint: disable=broad-except  # Damaged, or deleted by a live run.
      continue
  else:
    return
  want = _flat_shapes(abstract_params)
  diff = [f'{k}: {saved.get(k, "absent")} saved, {want.get(k, "absent")} in --config'
          for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)]
  if diff:
    more = f', {len(diff) - 2} more' if len(diff) > 2 else ''
    raise _error(f'--from_workdir: {os.path.abspath(source)} (step {s}) holds parameters of '
                 f'another shape than --config\'s model ({", ".join(diff[:2])}{more})'
                 f'{_config_hint(source, s, config)}; allowed: a trained run of a model with '
                 'these parameter shapes (only changes that need no training: a RoPE '
                 'scaling, eval lengths, data)')


def restore(source: str, abstract_params, step: int | None):
  """``(params, step)``; a failed restore is one InputError line."""
  from posjax.workdir import checkpoints
  try:
    return checkpoints.restore_params(source, abstract_params, step)
  except Exception as e:  # pylint: disable=broad-except  # Orbax raises many types.
    path = os.path.abspath(source)
    if step is not None:
      others = [s for s in _steps(checkpoints.checkpoint_dir(path)) if s != step]
      raise _error(f'--step: step {step} of {path} does not restore ({_cause(e)}); allowed: '
                   f'another step ({", ".join(map(str, others)) or "none"})') from None
    raise _error(f'--from_workdir: {path} does not restore ({_cause(e)}); allowed: '
                 f'{_SOURCE} with a readable step of these parameter shapes') from None


@contextlib.contextmanager
def claimed(workdir: str, source: str):
  """``workdir`` created and locked by process 0 for the evaluation, and checked
  again under the lock. A lock held by another run is a one-line refusal that
  leaves the holder's workdir alone; whatever fails once the lock is ours leaves
  the workdir as it was found (one evaluate created goes)."""
  from posjax.workdir import lock
  path = os.path.abspath(workdir)
  if jax.process_index() != 0:  # Process 0 writes everything.
    yield path
    return
  existed = os.path.isdir(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise _error(f'--workdir: cannot create {path} ({_cause(e)}); allowed: {_TARGET}') from None
  lock_existed = os.path.exists(os.path.join(path, lock.LOCK_FILE))
  held = lock.Lock(path)
  try:
    held.acquire()
  except ValueError as e:
    raise _error(f'--{e}') from None
  before = set(os.listdir(path))
  try:
    check_target(path, source, locked=True)  # A run may have come and gone meanwhile.
    yield path
  except BaseException:
    _undo(path, before, existed, lock_existed)
    raise
  finally:
    held.release()


def _undo(path: str, before: set[str], existed: bool, lock_existed: bool) -> None:
  """Removes what evaluate added to ``path`` (all of it if evaluate created it)."""
  from posjax.workdir import lock
  added = set(os.listdir(path)) - before
  if not lock_existed:
    added.add(lock.LOCK_FILE)
  for name in added:
    target = os.path.join(path, name)
    if os.path.isdir(target) and not os.path.islink(target):
      shutil.rmtree(target, ignore_errors=True)
    elif os.path.lexists(target):
      os.remove(target)
  if not existed and not os.listdir(path):
    os.rmdir(path)


def evaluate(config, from_workdir: str, workdir: str, step: int | str | None = None
             ) -> dict[str, float]:
  """Evaluates ``from_workdir``'s params (its newest readable step, or ``step``)
  under ``config``; logs to ``workdir``. InputError / ConfigError for bad input,
  before anything is written."""
  from posjax.training import metrics, validation
  from posjax.training.steps import Trainer
  from posjax.workdir import run_config
  mcfg, task = validation.validate(config)
  step = check_source(from_workdir, None if step is None else str(step))
  check_target(workdir, from_workdir)
  trainer = Trainer(config, mcfg, task)
  abstract = trainer.abstract_state['params']
  check_shapes(from_workdir, step, abstract, config)
  try:
    eval_sets = task.eval_sets(jax.process_index(), jax.process_count())
  except ValueError as e:
    raise validation.InputError(str(e)) from None
  validation.check_eval_sets(mcfg, eval_sets)
  params, step = restore(from_workdir, abstract, step)
  with claimed(workdir, from_workdir) as path:
    if jax.process_index() == 0:
      sys.stderr.write(f'evaluating {os.path.abspath(from_workdir)} at step {step}\n')
    results = trainer.evaluate(params, eval_sets)
    if jax.process_index() == 0:  # A previous evaluation's results are replaced.
      for pattern in _RESULTS:
        for old in glob.glob(os.path.join(glob.escape(path), pattern)):
          os.remove(old)
    run_config.save_config(path, config)
    writer = metrics.MetricWriter(path)
    writer.write(step, results)
    writer.close()
  return results


def _fail(message: str, code: int = 2) -> None:
  sys.stderr.write(f'error: {" ".join(str(message).split())}\n')  # Always one line.
  sys.stderr.flush()
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    _fail(f'arguments: unexpected {argv[1:]}; allowed: flags only')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from posjax.training import validation
  workdir, source = flags.FLAGS.workdir, _FROM.value
  for name, value in (('--from_workdir', source), ('--workdir', workdir)):
    if not value:
      _fail(f'{name}: required; allowed: {_SOURCE if name == "--from_workdir" else _TARGET}')
  try:
    final = evaluate(posjax_main.loaded_config(), source, workdir, _STEP.value)
  except (validation.ConfigError, validation.InputError) as e:
    _fail(str(e))
  except KeyboardInterrupt:
    _fail('interrupted (Ctrl-C) before the results were written; --workdir is left as '
          'it was found', 130)
  print(f'metrics:     {os.path.join(os.path.abspath(workdir), "metrics.jsonl")}')
  print('final evaluation:')
  for k in sorted(final):
    print(f'  {k:28s} {final[k]:.4f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=posjax_main.parse_flags)
