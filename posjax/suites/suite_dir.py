"""The suite directory on disk (``posjax.suites.runner``): ``suite.json`` (the
settings a rerun must repeat), each run's ``status.json``, the lock that keeps one
runner per suite directory, and ``results.md``.

A damaged ``suite.json`` is a ``UsageError`` (never read as absent: that would let
any settings through); a damaged ``status.json`` is a warning line and the run is
taken as not finished (rerunning it resumes it and rewrites the file). The lock is
``posjax.workdir.lock.Lock`` on the suite directory, taken before anything is written.
"""
from __future__ import annotations

import os
import shutil
import sys

from posjax.suites.process import STATUS_FILE, Damaged, read_json_file, write_json
from posjax.workdir import lock as workdir_lock

SUITE_FILE = 'suite.json'
RECORD_FILES = ('config.json', STATUS_FILE, 'metrics.jsonl')  # What a report reads.


class UsageError(ValueError):
  """A bad flag or workdir: one line, exit code 2."""


def run_status(job) -> dict | None:
  """The run's status.json (None if it has none). A damaged one is a warning line
  and None: the run is taken as not finished, and rerunning it (posjax resumes from
  its checkpoints) rewrites the file."""
  try:
    return read_json_file(os.path.join(job.dir, STATUS_FILE))
  except Damaged as e:
    sys.stderr.write(f'warning: {" ".join(str(e).split())}; {job.run.name} is taken as not '
                     'finished: the suite reruns it (posjax resumes it from its '
                     'checkpoints) and rewrites the file\n')
    return None


def is_finished(job) -> bool:
  """Finished: status.json says so and the run reached its step count
  (a checkpoint at ``num_train_steps``; an evaluation: its metrics)."""
  if (run_status(job) or {}).get('status') != 'finished':
    return False
  if job.run.evaluate:
    return os.path.exists(os.path.join(job.dir, 'metrics.jsonl'))
  ckpts = os.path.join(job.dir, 'checkpoints')
  steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return max(steps, default=-1) >= job.total


def check_suite_file(suite_dir: str, settings: dict, runs: list[str], write: bool) -> None:
  """Refuses a workdir made with other settings, or whose suite.json is damaged
  (never read as absent: that would let any settings through); records the
  settings (and the run names)."""
  path = os.path.join(suite_dir, SUITE_FILE)
  try:
    saved = read_json_file(path)
    if saved is not None and (missing := [k for k in settings if k not in saved]):
      raise Damaged(f'{path} is damaged (no {", ".join(missing)})')
  except Damaged as e:
    raise UsageError(f'--workdir: {e}; allowed: restore it (it records the suite, scale '
                     'and overrides the runs there were made with), or delete it if they '
                     'were made with the settings of this command') from None
  if saved is not None:
    old = {k: saved.get(k) for k in settings}
    if old != settings:
      diff = ', '.join(f'{k} ({old[k]!r} -> {settings[k]!r})' for k in settings
                       if old[k] != settings[k])
      raise UsageError(f'--workdir: {suite_dir} holds a suite run with other settings: '
                       f'{diff}; allowed: the same settings, or a new workdir')
  if write:
    os.makedirs(suite_dir, exist_ok=True)
    write_json(path, {**settings, 'runs': runs})


def export_runs(suite_dir: str, dest: str, names: list[str], order: list[str]) -> list[str]:
  """Copies the records of the finished runs among ``names`` into ``dest`` (made
  with the same settings, else a ``UsageError``), beside the runs already there;
  ``dest/suite.json`` lists every run there in ``order``. The names copied."""
  settings = read_json_file(os.path.join(suite_dir, SUITE_FILE)) or {}
  settings = {k: v for k, v in settings.items() if k != 'runs'}
  check_suite_file(dest, settings, [], write=False)
  done = [n for n in names if _finished(os.path.join(suite_dir, n))]
  for name in done:
    os.makedirs(os.path.join(dest, name), exist_ok=True)
    for f in RECORD_FILES:
      if os.path.exists(src := os.path.join(suite_dir, name, f)):
        shutil.copyfile(src, os.path.join(dest, name, f))
  os.makedirs(dest, exist_ok=True)
  there = {n for n in os.listdir(dest) if os.path.exists(os.path.join(dest, n, STATUS_FILE))}
  write_json(os.path.join(dest, SUITE_FILE), {**settings, 'runs': [n for n in order if n in there]})
  return done


def _finished(run_dir: str) -> bool:
  try:
    return (read_json_file(os.path.join(run_dir, STATUS_FILE)) or {}).get('status') == 'finished'
  except Damaged:
    return False


def lock_suite(suite_dir: str) -> workdir_lock.Lock:
  """The suite directory's lock (created with it if need be): a UsageError naming
  the runner that holds it."""
  try:
    workdir_lock.check_usable(suite_dir)
  except ValueError as e:
    raise UsageError(f'--{e}') from None
  try:
    os.makedirs(suite_dir, exist_ok=True)
    return workdir_lock.Lock(suite_dir).acquire()
  except ValueError:  # Held.
    raise UsageError(f'--workdir: {suite_dir} is in use by {_holder(suite_dir)}; allowed: one '
                     'runner per suite workdir (wait for it or stop it, or use another '
                     '--workdir)') from None
  except OSError as e:
    raise UsageError(f'--workdir: cannot lock {suite_dir} ({e}); allowed: a directory this '
                     'user can write') from None


def _holder(suite_dir: str) -> str:
  try:
    with open(os.path.join(suite_dir, workdir_lock.LOCK_FILE)) as f:
      return f.read(200).strip() or 'another process'
  except OSError:
    return 'another process'


def note_busy(suite_dir: str, what: str) -> None:
  if os.path.isdir(suite_dir) and workdir_lock.in_use(suite_dir):
    sys.stderr.write(f'note: {suite_dir} is in use by {_holder(suite_dir)}; {what}\n')


def write_report(suite, suite_dir: str, names: list[str] | None = None) -> str:
  """``suite.report`` of the runs in ``suite_dir`` (or of ``names`` alone) as
  ``results.md``; its path."""
  from posjax.suites import report
  for name in sorted(os.listdir(suite_dir)) if os.path.isdir(suite_dir) else []:
    try:
      read_json_file(os.path.join(suite_dir, name, STATUS_FILE))
    except Damaged as e:
      sys.stderr.write(f'warning: {" ".join(str(e).split())}; the report judges {name} by its '
                       'metrics (running the suite reruns it and rewrites the file)\n')
  text = suite.report(suite_dir, report.load_suite(suite_dir, names))
  path = os.path.join(suite_dir, 'results.md')
  with open(path + '.tmp', 'w') as f:  # A reader never sees half a report.
    f.write(f'# {suite.NAME}\n\n{" ".join(suite.DESCRIPTION.split())}\n\n{text.strip()}\n')
  os.replace(path + '.tmp', path)
  print(f'report: {path}')
  return path
