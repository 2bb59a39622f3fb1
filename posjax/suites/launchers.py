"""How the runs of an experiment suite execute (``posjax.suites.runner``).

``launch_local`` runs jobs ``parallel`` at a time, ``launch_slurm`` as one
submitit job array (SLURM, or submitit's ``local`` executor), each run through
``posjax.suites.process.execute``. Both print a progress line per run
(``Progress``) and return ``{run name: status}``. A job is anything with
``run.name``, ``dir``, ``command`` and ``total`` (its number of training steps).
After Ctrl-C or SIGTERM on the runner (``STOP``) no queued run starts (``not
started``), the live ones get SIGTERM (``interrupted``) and a job array is cancelled.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable

from posjax.suites.process import (
    LOG_FILE, STATUS_FILE, STOP, STOP_SECONDS, Damaged, Requeueable, checkout_env, execute,
    not_started, read_json_file, write_json)

PROGRESS_SECONDS = 30.0  # At most one progress line per run this often.


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
    state = status['status']
    if state == 'finished':
      self._say(job, f'finished in {took}')
    elif state == 'not started':
      self._say(job, f'not started: {status["reason"]}')
    else:
      self._say(job, f'{state}: {status["reason"]} (log: {status["log"]})')

  def note(self, text: str) -> None:
    with self.lock:
      sys.stdout.write(text + '\n')
      sys.stdout.flush()


def _duration(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  return f'{m // 60}:{m % 60:02d}:{s:02d}' if m >= 60 else f'{m}:{s:02d}'


def _wait(futures: dict, progress: Progress, result: Callable,
          gone: Callable = lambda fut: False, on_stop: Callable | None = None) -> dict:
  """Polls ``{future: job}`` until every one is done (or ``gone``);
  ``result(future, job)`` -> status; after a ``STOP``, ``on_stop(pending)`` gives
  the statuses of those not done."""
  out = {}
  pending = dict(futures)
  while pending:
    if STOP.by and on_stop is not None:
      out.update(on_stop(pending))
      break
    for fut, job in list(pending.items()):
      if fut.done() or gone(fut):
        out[job.run.name] = result(fut, job)
        progress.end(job, out[job.run.name])
        del pending[fut]
      else:
        progress.poll(job)
    time.sleep(0.2 if pending else 0)
  return out


def launch_local(jobs: list, progress: Progress, parallel: int = 1) -> dict:
  """The jobs ``parallel`` at a time, in order. After a ``STOP`` no queued job
  starts (``not started``) and the live ones get SIGTERM (SIGKILL after
  STOP_SECONDS or at a second signal); their status says ``interrupted``."""
  queue, running, out = list(jobs), {}, {}
  stopping = None  # When the stop was seen.
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    while running or (queue and not STOP.by):
      if STOP.by and stopping is None:
        stopping = time.time()
        live = STOP.stop_children()
        progress.note(f'{STOP.by}: stopping: {live} live run(s) sent SIGTERM (posjax saves '
                      f'a checkpoint), {len(queue)} queued run(s) not started; '
                      f'{STOP.by} again kills them at once')
      if stopping is not None and (STOP.count > 1 or time.time() - stopping > STOP_SECONDS):
        STOP.kill_children()
      while queue and len(running) < parallel and not STOP.by:
        job = queue.pop(0)
        progress.start(job)
        running[pool.submit(execute, job.command, job.dir)] = job
      for fut, job in list(running.items()):
        if fut.done():
          out[job.run.name] = fut.result()
          progress.end(job, out[job.run.name])
          del running[fut]
        else:
          progress.poll(job)
      time.sleep(0.2 if running else 0)
  for job in queue:
    out[job.run.name] = not_started(job)
    progress.end(job, out[job.run.name])
  return out


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
  """One job array (``executor.batch()``) of ``Requeueable`` runs; a job that dies
  outside posjax (node failure, too many time limits) is failed with the reason.
  After a ``STOP`` every job not done is cancelled (``job.cancel()``: scancel):
  ``interrupted`` if it had started, else ``not started``."""
  with _checkout_pythonpath(), executor.batch():  # Submitted at exit of batch().
    submitted = [executor.submit(Requeueable(), job.command, job.dir) for job in jobs]
  for job, sub in zip(jobs, submitted):
    progress.start(job)

  def result(sub, job):
    try:
      if not sub.done():  # Left the queue without a result.
        raise RuntimeError(_last_error(str(sub.paths.stderr)))
      return sub.result()
    except Exception as e:  # submitit raises its own types for a dead job.
      text = ' '.join(str(e).split())[-300:]
      status = {'status': 'failed', 'reason': f'{type(e).__name__}: {text}',
                'log': str(sub.paths.stderr), 'command': job.command, 'seconds': 0.0}
      os.makedirs(job.dir, exist_ok=True)
      write_json(os.path.join(job.dir, STATUS_FILE), status)
      return status

  def cancel(pending: dict) -> dict:
    progress.note(f'{STOP.by}: stopping: cancelling {len(pending)} job(s) of the array '
                  f'(a running posjax run saves a checkpoint at the SIGTERM)')
    out = {}
    for sub, job in pending.items():
      try:
        sub.cancel(check=False)
      except Exception as e:  # scancel missing or failing: say so, go on.
        progress.note(f'  could not cancel job {sub.job_id} ({job.run.name}): {e}')
      path = os.path.join(job.dir, STATUS_FILE)
      try:
        current = read_json_file(path) or {}
      except Damaged:
        current = {}
      if current.get('status') == 'running':  # Its execute started on a node.
        out[job.run.name] = {
            'seconds': 0.0, **current, 'status': 'interrupted', 'command': job.command,
            'log': os.path.join(job.dir, LOG_FILE),
            'reason': f'the runner was stopped ({STOP.by}): job {sub.job_id} cancelled'}
        write_json(path, out[job.run.name])
      else:
        out[job.run.name] = not_started(
            job, f'the runner was stopped ({STOP.by}): job {sub.job_id} cancelled before it started')
      progress.end(job, out[job.run.name])
    return out

  gone = SlurmQueue().gone if executor.cluster == 'slurm' else (lambda sub: False)
  return _wait(dict(zip(submitted, jobs)), progress, result, gone, on_stop=cancel)


@contextlib.contextmanager
def _checkout_pythonpath():
  """``PYTHONPATH`` as ``checkout_env`` sets it, inside (what submitit's ``sbatch``
  or local processes inherit)."""
  old = os.environ.get('PYTHONPATH')
  os.environ['PYTHONPATH'] = checkout_env()['PYTHONPATH']
  try:
    yield
  finally:
    if old is None:
      os.environ.pop('PYTHONPATH', None)
    else:
      os.environ['PYTHONPATH'] = old


class SlurmQueue:
  """Which jobs ``squeue`` no longer lists, asked at most every ``every`` seconds.
  submitit learns that a job died (time limit, node failure, scancel) from
  ``sacct``; on a cluster without accounting it would wait for it forever."""

  every = 30.0

  def __init__(self):
    self.checked, self.queued = 0.0, None

  def gone(self, sub) -> bool:
    if time.time() - self.checked >= self.every:
      self.checked, self.queued = time.time(), self._queued()
    if self.queued is None or sub.job_id in self.queued:
      return False
    return not sub.paths.result_pickle.exists()  # Not one that just finished.

  @staticmethod
  def _queued() -> set | None:
    """Every queued or running job and array task of ours; None if squeue cannot say."""
    try:
      out = subprocess.run(['squeue', '--me', '-h', '-r', '-o', '%i'], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
      return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def _last_error(path: str) -> str:
  """The last line of a job's stderr that says error (slurmstepd's ``*** JOB 12
  ON node CANCELLED AT ... DUE TO TIME LIMIT ***``), else a generic reason."""
  try:
    with open(path) as f:
      lines = [l.strip() for l in f if 'error:' in l]
  except OSError:
    lines = []
  return lines[-1] if lines else 'the job left the queue without a result'
