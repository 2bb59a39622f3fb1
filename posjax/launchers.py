"""How the runs of an experiment suite execute (``posjax.experiments``).

``execute(cmd, run_dir)`` runs one command with its output in ``run_dir/log.txt``
and its outcome in ``run_dir/status.json``; ``launch_local`` runs jobs in a pool of
``parallel`` processes, ``launch_slurm`` as one submitit job array (SLURM, or
submitit's ``local`` executor). Both print a progress line per run (``Progress``)
and return ``{run name: status}``. A job is anything with ``run.name``, ``dir``,
``command`` and ``total`` (its number of training steps).
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUS_FILE, LOG_FILE = 'status.json', 'log.txt'
PROGRESS_SECONDS = 30.0  # At most one progress line per run this often.


def read_json(path: str) -> dict:
  try:
    with open(path) as f:
      out = json.load(f)
    return out if isinstance(out, dict) else {}
  except (OSError, ValueError):
    return {}


def write_json(path: str, value: dict) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(path + '.tmp', path)


def last_step(run_dir: str) -> int:
  """The last step logged in ``metrics.jsonl`` (0 if none)."""
  step = 0
  try:
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          step = max(step, int(json.loads(line).get('step', 0)))
        except (ValueError, AttributeError):
          continue  # A partial last line.
  except OSError:
    pass
  return step


def failure_reason(log_path: str, returncode: int) -> str:
  """The log's last ``error:`` line, else its last line (a traceback's exception)."""
  try:
    with open(log_path, errors='replace') as f:
      lines = [l.strip() for l in f.read().replace('\r', '\n').split('\n') if l.strip()]
  except OSError:
    lines = []
  errors = [l for l in lines if l.startswith('error:')]
  reason = errors[-1] if errors else (lines[-1] if lines else 'no output')
  return f'exit code {returncode}: {reason[:300]}'


def execute(cmd: list[str], run_dir: str) -> dict:
  """Runs ``cmd`` (from the repository root) with its output in ``run_dir/log.txt``;
  writes and returns its status.json. Module-level: submitit pickles it."""
  os.makedirs(run_dir, exist_ok=True)
  log, path = os.path.join(run_dir, LOG_FILE), os.path.join(run_dir, STATUS_FILE)
  cmd = [sys.executable if c == 'python' and i == 0 else c for i, c in enumerate(cmd)]
  status = {'status': 'running', 'reason': '', 'log': log, 'command': cmd, 'seconds': 0.0}
  write_json(path, status)
  start = time.time()
  with open(log, 'w') as out:
    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
  status.update(status='finished' if rc == 0 else 'failed', seconds=time.time() - start,
                reason='' if rc == 0 else failure_reason(log, rc))
  write_json(path, status)
  return status


# ----------------------------------------------------------------------------
# Launchers.

class Progress:
  """One line per run when it starts, at most every PROGRESS_SECONDS while its
  step advances (step/total and ETA from metrics.jsonl), and when it ends."""

  def __init__(self, jobs: list):
    self.index = {j.run.name: i + 1 for i, j in enumerate(jobs)}
    self.count, self.seen, self.lock = len(jobs), {}, threading.Lock()

  def _say(self, job, text: str) -> None:
    with self.lock:  # Whole lines from the launcher's threads.
      sys.stdout.write(f'[{self.index[job.run.name]}/{self.count}] {job.run.name}: {text}\n')
      sys.stdout.flush()

  def start(self, job) -> None:
    self.seen[job.run.name] = (time.time(), last_step(job.dir), 0.0)
    self._say(job, f'started (log: {os.path.join(job.dir, LOG_FILE)})')

  def poll(self, job) -> None:
    if job.run.name not in self.seen:  # Not started yet.
      return
    t0, s0, shown = self.seen[job.run.name]
    now, step = time.time(), last_step(job.dir)
    if step <= s0 or now - shown < PROGRESS_SECONDS:
      return
    eta = (job.total - step) * (now - t0) / (step - s0)
    self._say(job, f'step {step}/{job.total}, ETA {_duration(eta)}')
    self.seen[job.run.name] = (t0, s0, now)

  def end(self, job, status: dict) -> None:
    took = _duration(status.get('seconds', 0.0))
    self._say(job, f'finished in {took}' if status['status'] == 'finished'
              else f'failed: {status["reason"]} (log: {status["log"]})')


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f'{m // 60}:{m % 60:02d}:{s:02d}' if m >= 60 else f'{m}:{s:02d}'


def _wait(futures: dict, progress: Progress, result: Callable) -> dict:
  """Polls ``{future: job}`` until every one is done; ``result(future)`` -> status."""
  out = {}
  pending = dict(futures)
  while pending:
    for fut, job in list(pending.items()):
      if fut.done():
        out[job.run.name] = result(fut, job)
        progress.end(job, out[job.run.name])
        del pending[fut]
      else:
        progress.poll(job)
    time.sleep(0.5 if pending else 0)
  return out


def launch_local(jobs: list, progress: Progress, parallel: int = 1) -> dict:
  """The jobs in a pool of ``parallel`` processes, in order."""
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    def start_and_execute(job):
      progress.start(job)
      return execute(job.command, job.dir)
    futures = {pool.submit(start_and_execute, job): job for job in jobs}
    return _wait(futures, progress, lambda fut, job: fut.result())


def slurm_executor(folder: str, cluster: str, **params):
  """A submitit executor (``cluster='slurm'``, or ``'local'`` / ``'debug'``);
  ``params`` with empty values are left at submitit's defaults."""
  # Unless told not to, submitit's import runs logging.config.dictConfig, which
  # closes every handler the process already has (absl's, a notebook's, pytest's);
  # its records then go through the root logger like everyone else's.
  os.environ.setdefault('SUBMITIT_LOG_LEVEL', 'NOCONFIG')
  import submitit
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  executor.update_parameters(**{k: v for k, v in params.items() if v not in ('', None)})
  return executor


def launch_slurm(jobs: list, progress: Progress, executor) -> dict:
  """One job array (``executor.batch()``); a job that dies outside posjax (time
  limit, node failure) is failed with submitit's reason."""
  with executor.batch():
    submitted = [executor.submit(execute, job.command, job.dir) for job in jobs]
  for job, sub in zip(jobs, submitted):
    progress.start(job)

  def result(sub, job):
    try:
      return sub.result()
    except Exception as e:  # submitit raises its own types for a dead job.
      text = ' '.join(str(e).split())[-300:]
      status = {'status': 'failed', 'reason': f'{type(e).__name__}: {text}',
                'log': str(sub.paths.stderr), 'command': job.command, 'seconds': 0.0}
      os.makedirs(job.dir, exist_ok=True)
      write_json(os.path.join(job.dir, STATUS_FILE), status)
      return status
  return _wait(dict(zip(submitted, jobs)), progress, result)
