"""Experiment suites: one command trains every run of a published comparison and
writes its table and plots (``experiments/*.py``; see docs/experiments.md).

A suite is a module with ``NAME``, ``DESCRIPTION``, ``runs(scale) -> [Run]``,
``report(suite_dir, records) -> markdown`` and optionally ``requirements(scale,
overrides, runs) -> [line]`` (what the selected runs need built or downloaded
first; any line stops the suite before a run starts) and ``prepare(suite_dir,
scale, overrides)`` (cheap set-up such as building small datasets). ``run_suite(module)`` is its command line:

  python experiments/extrapolation.py --workdir=DIR [--scale=local|paper] [--only=a,b*]
      [--launcher=local|slurm|print] [--parallel=N] [--config.<field>=<value> ...]
      [--report] [--dry_run]

Every run is an ordinary ``python -m posjax.main`` run in ``DIR/<name>`` (resumable,
``load_for_analysis`` works), its output in ``DIR/<name>/log.txt`` and its outcome in
``DIR/<name>/status.json``. A rerun skips finished runs and reruns the others (posjax
resumes them); ``DIR/suite.json`` records the suite, scale and overrides, and a rerun
with other settings is refused. ``Run.evaluate`` runs ``posjax.evaluate`` instead:
the params of ``Run.base`` evaluated under this run's config (zero-shot changes).
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
from posjax.suites.launchers import REPO, STATUS_FILE, read_json, write_json

SUITE_FILE = 'suite.json'


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


class UsageError(ValueError):
  """A bad flag or workdir: one line, exit code 2."""


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
# State on disk.

def is_finished(job: Job) -> bool:
  """Finished: status.json says so and the run reached its step count
  (a checkpoint at ``num_train_steps``; an evaluation: its metrics)."""
  if read_json(os.path.join(job.dir, STATUS_FILE)).get('status') != 'finished':
    return False
  if job.run.evaluate:
    return os.path.exists(os.path.join(job.dir, 'metrics.jsonl'))
  ckpts = os.path.join(job.dir, 'checkpoints')
  steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return max(steps, default=-1) >= job.total


def check_suite_file(suite_dir: str, settings: dict, runs: list[str], write: bool) -> None:
  """Refuses a workdir made with other settings; records them (and the run names)."""
  path = os.path.join(suite_dir, SUITE_FILE)
  saved = read_json(path)
  if saved:
    old = {k: saved.get(k) for k in settings}
    if old != settings:
      diff = ', '.join(f'{k} ({old[k]!r} -> {settings[k]!r})' for k in settings
                       if old[k] != settings[k])
      raise UsageError(f'--workdir: {suite_dir} holds a suite run with other settings: '
                       f'{diff}; allowed: the same settings, or a new workdir')
  if write:
    os.makedirs(suite_dir, exist_ok=True)
    write_json(path, {**settings, 'runs': runs})


# ----------------------------------------------------------------------------
# The command line of every suite.

def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'Suite directory: one subdirectory per run.',
                      flag_values=fv)
  flags.DEFINE_enum('scale', 'local', ['local', 'paper'], "local: minutes on a CPU; "
                    "paper: the paper's sizes, lengths and steps.", flag_values=fv)
  flags.DEFINE_list('only', [], 'Run names or globs (their base runs are added).',
                    flag_values=fv)
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'print'],
                    'local: here; slurm: a submitit job array; print: the command lines.',
                    flag_values=fv)
  flags.DEFINE_integer('parallel', 1, 'local: runs at a time.', lower_bound=1, flag_values=fv)
  flags.DEFINE_string('slurm_partition', '', 'slurm: partition.', flag_values=fv)
  flags.DEFINE_string('slurm_account', '', 'slurm: account.', flag_values=fv)
  flags.DEFINE_integer('slurm_gpus_per_node', 1, 'slurm: GPUs per run (one node).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('slurm_cpus_per_task', 8, 'slurm: CPUs per run.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer('slurm_time_min', 240, 'slurm: time limit per run (minutes).',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('slurm_array_parallelism', 64, 'slurm: runs at a time.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('submitit_cluster', 'slurm', ['slurm', 'local', 'debug'],
                    "slurm: sbatch; local / debug: submitit's executors on this machine.",
                    flag_values=fv)
  flags.DEFINE_bool('report', False, 'Only write the report of the runs there are.',
                    flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'Print what would run and write nothing.',
                    flag_values=fv)
  return fv


def split_config_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """``argv`` less its ``--config.<path>=<value>`` flags, and those as a dict."""
  rest, overrides = [], {}
  for arg in argv:
    if arg.startswith(('--config.', '-config.')):
      path, eq, value = arg.lstrip('-')[len('config.'):].partition('=')
      overrides[path] = value if eq else 'true'
    else:
      rest.append(arg)
  return rest, overrides


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
  if its base finished). Returns {name: status}."""
  progress, statuses = launchers.Progress(jobs), {}
  by_name = {j.run.name: j for j in jobs}
  for wave in ([j for j in jobs if not j.run.base], [j for j in jobs if j.run.base]):
    ready = []
    for job in wave:
      base = by_name.get(job.run.base)
      if job.error:
        statuses[job.run.name] = _not_started(job, job.error)
      elif base is not None and statuses.get(base.run.name, {}).get('status') == 'failed':
        statuses[job.run.name] = _not_started(job, f'base run {base.run.name} failed')
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


def _summary(statuses: dict[str, dict], skipped: list[str]) -> int:
  failed = {n: s for n, s in statuses.items() if s['status'] != 'finished'}
  print(f'summary: {len(statuses) - len(failed)} finished, {len(failed)} failed, '
        f'{len(skipped)} skipped (already finished{": " + ", ".join(skipped) if skipped else ""})')
  for name, s in failed.items():
    print(f'  failed {name}: {s["reason"]} ({"log: " + s["log"] if s["log"] else "not started"})')
  return 1 if failed else 0


def write_report(suite, suite_dir: str) -> str:
  """``suite.report`` of the runs in ``suite_dir`` as ``results.md``; its path."""
  from posjax.suites import report
  text = suite.report(suite_dir, report.load_suite(suite_dir))
  path = os.path.join(suite_dir, 'results.md')
  with open(path, 'w') as f:
    f.write(f'# {suite.NAME}\n\n{" ".join(suite.DESCRIPTION.split())}\n\n{text.strip()}\n')
  print(f'report: {path}')
  return path


def main(suite, argv: list[str]) -> int:
  """The suite's command line (``argv[0]`` is the program); the exit code."""
  try:
    return _main(suite, argv)
  except UsageError as e:
    sys.stderr.write(f'error: {" ".join(str(e).split())}\n')
    return 2


def _parse(argv: list[str]):
  rest, overrides = split_config_flags(argv)
  fv = _flags()
  try:
    args = fv(rest)
  except flags.Error as e:
    raise UsageError(f'flags: {str(e).splitlines()[0]}; allowed: '
                     f'{", ".join("--" + f for f in fv)}, --config.<field>=<value>') from None
  if len(args) > 1:
    raise UsageError(f'arguments: unexpected {args[1:]}; allowed: flags only')
  if not fv.workdir:
    raise UsageError('--workdir: required; allowed: a directory for the suite\'s runs')
  return fv, overrides


def _main(suite, argv: list[str]) -> int:
  fv, overrides = _parse(argv)
  suite_dir = os.path.abspath(os.path.expanduser(fv.workdir))
  runs = suite.runs(fv.scale)
  settings = {'suite': suite.NAME, 'scale': fv.scale, 'overrides': overrides}
  if fv.report:
    check_suite_file(suite_dir, settings, [r.name for r in runs], write=False)
    write_report(suite, suite_dir)
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
  check_suite_file(suite_dir, settings, [r.name for r in runs], write=not fv.dry_run)
  todo = [j for j in jobs if not is_finished(j)]
  skipped = [j.run.name for j in jobs if j not in todo]
  if only_print:
    for name in skipped if fv.dry_run else []:
      print(f'# skip {name} (finished)')
    for job in todo:
      print(shlex.join(job.command))
    return 0
  if hasattr(suite, 'prepare'):
    suite.prepare(suite_dir, fv.scale, overrides)
  code = _summary(_launch(todo, fv, suite_dir, suite.NAME), skipped)
  write_report(suite, suite_dir)
  return code


def run_suite(suite) -> None:
  """``if __name__ == '__main__': runner.run_suite(sys.modules[__name__])``."""
  sys.exit(main(suite, sys.argv))
