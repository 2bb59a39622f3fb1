"""How the runs of an experiment suite execute (``posjax.suites.runner``).

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
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
  if returncode < 0:  # Killed before it could say why.
    return f'killed by {signal.Signals(-returncode).name}: {reason[:300]}'
  return f'exit code {returncode}: {reason[:300]}'


def execute(cmd: list[str], run_dir: str, preexec: Callable | None = None) -> dict:
  """Runs ``cmd`` (from the repository root) with its output in ``run_dir/log.txt``;
  writes and returns its status.json. ``preexec`` runs in the child before ``cmd``."""
  os.makedirs(run_dir, exist_ok=True)
  log, path = os.path.join(run_dir, LOG_FILE), os.path.join(run_dir, STATUS_FILE)
  cmd = [sys.executable if c == 'python' and i == 0 else c for i, c in enumerate(cmd)]
  status = {'status': 'running', 'reason': '', 'log': log, 'command': cmd, 'seconds': 0.0}
  write_json(path, status)
  start = time.time()
  with open(log, 'w') as out:
    child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                             preexec_fn=preexec)
    _CHILD[run_dir] = child
    while (rc := child.poll()) is None:  # Not wait(): a signal handler may wait too.
      time.sleep(0.5)
  status.update(status='finished' if rc == 0 else 'failed', seconds=time.time() - start,
                reason='' if rc == 0 else failure_reason(log, rc))
  write_json(path, status)
  return status


_CHILD = {}  # run_dir -> the running command, for Requeueable.checkpoint.
STOP_SECONDS = 60.0  # How long a stopped run may take to write its checkpoint.


def _ignore_submitit_signal() -> None:
  """SLURM sends the time-limit signal to every process of the job; the run must
  live on to get the SIGTERM that makes it checkpoint."""
  name = os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')
  signal.signal(getattr(signal, f'SIG{name}', signal.SIGUSR2), signal.SIG_IGN)


class Requeueable:
  """``execute`` as a submitit job array runs it: when SLURM signals the time limit
  or a preemption, submitit calls ``checkpoint``, which stops the run with SIGTERM
  (posjax saves a checkpoint and exits) and hands submitit the same call to requeue;
  the requeued job resumes from that checkpoint (at most ``max_num_timeout`` times).
  The job's process has one thread, so ``preexec_fn`` is safe there."""

  def __call__(self, cmd: list[str], run_dir: str) -> dict:
    return execute(cmd, run_dir, preexec=_ignore_submitit_signal)

  def checkpoint(self, cmd: list[str], run_dir: str):
    import submitit
    child = _CHILD.get(run_dir)
    if child is not None and child.poll() is None:
      child.terminate()
      try:
        child.wait(STOP_SECONDS)
      except subprocess.TimeoutExpired:
        child.kill()
    return submitit.helpers.DelayedSubmission(self, cmd, run_dir)


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


def _wait(futures: dict, progress: Progress, result: Callable,
          gone: Callable = lambda fut: False) -> dict:
  """Polls ``{future: job}`` until every one is done (or ``gone``);
  ``result(future, job)`` -> status."""
  out = {}
  pending = dict(futures)
  while pending:
    for fut, job in list(pending.items()):
      if fut.done() or gone(fut):
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
  """One job array (``executor.batch()``) of ``Requeueable`` runs; a job that dies
  outside posjax (node failure, too many time limits) is failed with the reason."""
  with executor.batch():
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
  gone = SlurmQueue().gone if executor.cluster == 'slurm' else (lambda sub: False)
  return _wait(dict(zip(submitted, jobs)), progress, result, gone)


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
