"""Experiment suites: one command trains every run of a published comparison and
writes its table and plots (``experiments/*.py``; see docs/experiments.md).

A suite is a module with ``NAME``, ``DESCRIPTION``, ``runs(scale) -> [Run]``,
``report(suite_dir, records) -> markdown`` and optionally ``requirements(scale,
overrides, runs) -> [line]`` (what the selected runs need built or downloaded
first; any line stops the suite before a run starts) and ``prepare(suite_dir,
scale, overrides)`` (cheap set-up such as building small datasets). ``run_suite(module)`` is its command line:

  python experiments/extrapolation.py --workdir=DIR [--scale=local|paper] [--only=a,b*]
      [--launcher=local|slurm|print] [--parallel=N] [--config.<field>=<value> ...]
      [--report] [--export=FOLDER] [--dry_run]

Every run is an ordinary ``python -m posjax.main`` run in ``DIR/<name>`` (resumable,
``load_for_analysis`` works), its output in ``DIR/<name>/log.txt`` and its outcome in
``DIR/<name>/status.json``. A rerun skips finished runs and reruns the others (posjax
resumes them); ``DIR/suite.json`` records the suite, scale and overrides, and a rerun
with other settings is refused. ``Run.evaluate`` runs ``posjax.evaluate`` instead:
the params of ``Run.base`` evaluated under this run's config (zero-shot changes).

One runner per suite directory: it holds ``DIR/.posjax.lock`` (``posjax.workdir.lock``)
before it writes anything, and a second one is refused in one line (exit 2);
``--report`` and ``--dry_run`` write no run state and need no lock; ``--report
--only=...`` reports the selected runs alone. ``--export=FOLDER`` copies what a report
reads of the finished runs (config, status, metrics; no checkpoints) into FOLDER,
beside the runs already there, and writes its report there: a results folder to
commit, which ``--report --workdir=FOLDER`` regenerates. Ctrl-C or
SIGTERM stops the live runs (they save a checkpoint), starts no queued one, and
ends with the summary and the report (exit 130). A damaged ``suite.json`` is
refused in one line, a damaged run ``status.json`` is a warning and the run reruns.
A suite script runs the posjax and ``configs/`` of its own checkout (``REPO``).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import os
import shlex
import sys
from typing import Any, Mapping

from absl import flags

from posjax import config_lib
from posjax.suites import launchers
from posjax.suites.cli import HELP_FLAGS, define_flags, split_config_flags, usage
from posjax.suites.launchers import STATUS_FILE, write_json
from posjax.suites.process import REPO
from posjax.suites.suite_dir import (UsageError, check_suite_file, is_finished, lock_suite,
                                     note_busy, write_report, export_runs)
from posjax.workdir import lock as workdir_lock


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a suite: ``--config=<config>:<arg>`` plus ``overrides``
  (string values may hold ``{suite_dir}``). ``base``: the run whose final params
  this one starts from (fine-tuning, via ``init_from``) or, with ``evaluate``, is
  evaluated with (no training)."""
  name: str
  config: str  # Relative to the repository root, e.g. 'configs/lm.py'.
  arg: str = ''
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  note: str = ''
  base: str = ''
  evaluate: bool = False


# ----------------------------------------------------------------------------
# Configs and command lines.

def flag_value(value: Any) -> str:
  """``value`` as posjax.main's ``--config.<field>=`` text."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    return ','.join(str(v) for v in value)
  return str(value)


def run_overrides(run: Run, suite_dir: str) -> dict[str, Any]:
  """The run's own overrides with ``{suite_dir}`` filled in (and ``init_from``)."""
  out = {k: v.replace('{suite_dir}', suite_dir) if isinstance(v, str) else v
         for k, v in run.overrides.items()}
  if run.base and not run.evaluate:
    out['init_from'] = os.path.join(suite_dir, run.base)
  return out


def load_config(run: Run):
  """The config file's ``get_config(arg)`` (imported from the repository root)."""
  path = os.path.join(REPO, run.config)
  spec = importlib.util.spec_from_file_location(f'_posjax_config_{run.name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(run.arg)


def command(run: Run, suite_dir: str, overrides: Mapping[str, str]) -> list[str]:
  """``python -m posjax.main ...`` (or ``posjax.evaluate``) of ``run``."""
  module = 'posjax.evaluate' if run.evaluate else 'posjax.main'
  config = f'{run.config}:{run.arg}' if run.arg else run.config
  out = ['python', '-m', module, f'--config={config}',
         f'--workdir={os.path.join(suite_dir, run.name)}']
  if run.evaluate:
    out.append(f'--from_workdir={os.path.join(suite_dir, run.base)}')
  items = {**run_overrides(run, suite_dir), **overrides}
  return out + [f'--config.{k}={flag_value(v)}' for k, v in items.items()]


@dataclasses.dataclass
class Job:
  """A run as the runner sees it: its config (None if its own overrides fail),
  command line and state."""
  run: Run
  dir: str
  command: list[str]
  total: int = 0
  error: str = ''  # Why the run cannot start.


def plan(runs: list[Run], suite_dir: str, overrides: Mapping[str, str]) -> list[Job]:
  """A Job per run. A user override that does not apply is a UsageError (before
  anything runs); a run whose own overrides fail gets ``error`` (it fails alone)."""
  jobs = []
  for run in runs:
    job = Job(run, os.path.join(suite_dir, run.name), command(run, suite_dir, overrides))
    try:
      config = config_lib.apply_overrides(load_config(run), run_overrides(run, suite_dir))
    except ValueError as e:
      job.error = str(e)
      jobs.append(job)
      continue
    try:
      config_lib.apply_overrides(config, dict(overrides))
    except ValueError as e:
      raise UsageError(f'--config.{e}') from None
    job.total = int(config.num_train_steps)
    jobs.append(job)
  return jobs


# ----------------------------------------------------------------------------
# The command line of every suite.

def select(runs: list[Run], only: list[str]) -> list[Run]:
  """The runs named (or matched by a glob) in ``only`` and their bases, in order."""
  if not only:
    return runs
  names = [r.name for r in runs]
  for pattern in only:
    if not fnmatch.filter(names, pattern):
      raise UsageError(f'--only: {pattern!r} matches no run; allowed: {", ".join(names)}')
  chosen = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in only)}
  chosen |= {r.base for r in runs if r.name in chosen and r.base}
  return [r for r in runs if r.name in chosen]


def _not_started(job: Job, reason: str) -> dict:
  status = {'status': 'failed', 'reason': reason, 'log': '', 'command': job.command,
            'seconds': 0.0}
  os.makedirs(job.dir, exist_ok=True)
  write_json(os.path.join(job.dir, STATUS_FILE), status)
  return status


def _launch(jobs: list[Job], fv, suite_dir: str, suite_name: str) -> dict[str, dict]:
  """Runs without a base first, then the runs that start from one (each only
  if its base finished). Returns {name: status}. After a ``launchers.STOP`` no
  further run starts: they are ``not started``."""
  progress, statuses = launchers.Progress(jobs), {}
  by_name = {j.run.name: j for j in jobs}
  for wave in ([j for j in jobs if not j.run.base], [j for j in jobs if j.run.base]):
    ready = []
    for job in wave:
      base = by_name.get(job.run.base)
      if launchers.STOP.by:
        statuses[job.run.name] = launchers.not_started(job)
      elif job.error:
        statuses[job.run.name] = _not_started(job, job.error)
      elif base is not None and (state := statuses.get(base.run.name, {}).get(
          'status', 'not run')) != 'finished':
        statuses[job.run.name] = _not_started(job, f'base run {base.run.name} {state}')
      else:
        ready.append(job)
    if not ready:
      continue
    if fv.launcher == 'slurm':
      executor = launchers.slurm_executor(
          os.path.join(suite_dir, 'slurm'), fv.submitit_cluster, name=f'posjax-{suite_name}',
          timeout_min=fv.slurm_time_min, gpus_per_node=fv.slurm_gpus_per_node,
          cpus_per_task=fv.slurm_cpus_per_task, slurm_partition=fv.slurm_partition,
          slurm_account=fv.slurm_account, slurm_array_parallelism=fv.slurm_array_parallelism)
      statuses.update(launchers.launch_slurm(ready, progress, executor))
    else:
      statuses.update(launchers.launch_local(ready, progress, fv.parallel))
  return statuses


def _summary(statuses: dict[str, dict], skipped: list[str], stopped_by: str = '') -> int:
  """Prints the summary; the exit code: 130 if the runner was stopped, 1 if a run
  failed, else 0."""
  by = {k: {n: s for n, s in statuses.items() if s['status'] == k}
        for k in ('finished', 'failed', 'interrupted', 'not started')}
  failed = {n: s for n, s in statuses.items() if s['status'] not in by or s['status'] == 'failed'}
  stopped = by['interrupted'] or by['not started'] or stopped_by
  counts = f'{len(by["finished"])} finished, {len(failed)} failed, '
  if stopped:
    counts += f'{len(by["interrupted"])} interrupted, {len(by["not started"])} not started, '
  print(f'summary: {counts}{len(skipped)} skipped '
        f'(already finished{": " + ", ".join(skipped) if skipped else ""})')
  for name, s in failed.items():
    print(f'  failed {name}: {s["reason"]} ({"log: " + s["log"] if s["log"] else "not started"})')
  for name, s in by['interrupted'].items():
    print(f'  interrupted {name}: {s["reason"]} (log: {s["log"]})')
  if by['not started']:
    print(f'  not started: {", ".join(by["not started"])}')
  if stopped_by:
    print(f'stopped by {stopped_by}: rerun the same command to resume the interrupted runs '
          'and start the others')
    return 130
  return 1 if failed or by['interrupted'] else 0


def main(suite, argv: list[str]) -> int:
  """The suite's command line (``argv[0]`` is the program); the exit code."""
  try:
    return _main(suite, argv)
  except UsageError as e:
    sys.stderr.write(f'error: {" ".join(str(e).split())}\n')
    return 2
  except KeyboardInterrupt:  # Outside STOP.handling(): no run had started.
    sys.stderr.write('stopped by Ctrl-C before any run started\n')
    return 130


def _parse(argv: list[str], suite=None):
  """(flags, overrides); None after printing ``--help``."""
  rest, overrides = split_config_flags(argv)
  fv = define_flags()
  if any(a.partition('=')[0] in HELP_FLAGS for a in rest[1:]):
    sys.stdout.write(usage(suite, fv) if suite is not None else fv.get_help())
    return None
  try:
    args = fv(rest)
  except flags.Error as e:
    raise UsageError(f'flags: {str(e).splitlines()[0]}; allowed: '
                     f'{", ".join("--" + f for f in fv)}, --config.<field>=<value>, '
                     '--help') from None
  if len(args) > 1:
    raise UsageError(f'arguments: unexpected {args[1:]}; allowed: flags only')
  if not fv.workdir:
    raise UsageError('--workdir: required; allowed: a directory for the suite\'s runs')
  return fv, overrides


def own_checkout(suite) -> str | None:
  """The checkout a suite script belongs to (its folder's parent, if that holds a
  ``posjax`` package), else None."""
  path = getattr(suite, '__file__', None)
  root = os.path.dirname(os.path.dirname(os.path.abspath(path))) if path else ''
  return root if root and os.path.isfile(os.path.join(root, 'posjax', '__init__.py')) else None


def _main(suite, argv: list[str]) -> int:
  parsed = _parse(argv, suite)
  if parsed is None:
    return 0
  fv, overrides = parsed
  root = own_checkout(suite)
  if root and os.path.realpath(root) != os.path.realpath(REPO):
    sys.stderr.write(f'note: {suite.__file__} runs the posjax of {REPO}, not the one of its '
                     f'own checkout {root} (run the script itself to use its own)\n')
  suite_dir = os.path.abspath(os.path.expanduser(fv.workdir))
  runs = suite.runs(fv.scale)
  settings = {'suite': suite.NAME, 'scale': fv.scale, 'overrides': overrides}
  if fv.report or fv.export:  # Reads the runs, writes a report: no lock needed.
    if not os.path.isdir(suite_dir):
      raise UsageError(f'--workdir: {suite_dir} is '
                       f'{"a file" if os.path.exists(suite_dir) else "missing"}; '
                       'allowed: the --workdir of a suite that ran (--report writes its report)')
    check_suite_file(suite_dir, settings, [r.name for r in runs], write=False)
    note_busy(suite_dir, 'the report shows its runs as they are now')
    names = [r.name for r in select(runs, fv.only)] if fv.only else None
    if fv.export:
      _export(suite_dir, fv.export, names or [r.name for r in runs], [r.name for r in runs])
      suite_dir, names = os.path.abspath(os.path.expanduser(fv.export)), None
    write_report(suite, suite_dir, names)
    return 0
  selected = select(runs, fv.only)
  needs = getattr(suite, 'requirements', lambda *a: [])(fv.scale, overrides, selected)
  only_print = fv.dry_run or fv.launcher == 'print'
  if needs:
    sys.stderr.write(f'{"note" if only_print else "error"}: {suite.NAME} at scale '
                     f'{fv.scale} needs, before any run:\n' + ''.join(f'  {l}\n' for l in needs))
    if not only_print:
      return 2
  jobs = plan(selected, suite_dir, overrides)
  check_suite_file(suite_dir, settings, [r.name for r in runs], write=False)
  if fv.dry_run:  # Writes nothing: no lock needed.
    try:
      workdir_lock.check_usable(suite_dir)
    except ValueError as e:
      raise UsageError(f'--{e}') from None
    note_busy(suite_dir, 'what it runs now is shown as still to run')
    _print_plan(jobs, skip_lines=True)
    return 0
  lock = lock_suite(suite_dir)  # Before anything is written.
  try:
    check_suite_file(suite_dir, settings, [r.name for r in runs], write=True)
    if fv.launcher == 'print':
      _print_plan(jobs, skip_lines=False)
      return 0
    with launchers.STOP.handling() as stop:
      if hasattr(suite, 'prepare') and not stop.by:
        suite.prepare(suite_dir, fv.scale, overrides)
      todo = [j for j in jobs if not is_finished(j)]
      skipped = [j.run.name for j in jobs if j not in todo]
      statuses = _launch(todo, fv, suite_dir, suite.NAME)
      code = _summary(statuses, skipped, stop.by)
      write_report(suite, suite_dir)
    return code
  finally:
    lock.release()


def _export(suite_dir: str, dest: str, names: list[str], order: list[str]) -> None:
  done = export_runs(suite_dir, os.path.abspath(os.path.expanduser(dest)), names, order)
  left = [n for n in names if n not in done]
  print(f'export: {len(done)} finished runs copied to {dest}'
        + (f'; not finished, left out: {", ".join(left)}' if left else ''))


def _print_plan(jobs: list[Job], skip_lines: bool) -> None:
  todo = [j for j in jobs if not is_finished(j)]
  for job in jobs if skip_lines else []:
    if job not in todo:
      print(f'# skip {job.run.name} (finished)')
  for job in todo:
    print(shlex.join(job.command))


def run_suite(suite) -> None:
  """``if __name__ == '__main__': runner.run_suite(sys.modules[__name__])``."""
  sys.exit(main(suite, sys.argv))
