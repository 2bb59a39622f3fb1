"""One run of a suite as a process: ``execute(cmd, run_dir)`` runs one command
from this checkout's root with its output appended to ``run_dir/log.txt`` and its
outcome in ``run_dir/status.json`` (``posjax.suites.launchers`` runs many).

Every command runs the posjax of this checkout (``REPO``: from this file), with
it first on ``PYTHONPATH``, whatever posjax is installed.

``STOP``: Ctrl-C or SIGTERM on the runner (inside ``STOP.handling()``) is only
recorded; the launchers then stop the live runs with SIGTERM (posjax saves a
checkpoint; status ``interrupted``) and start no queued run (``not started``).
``Requeueable`` is ``execute`` as a submitit job (SLURM's time limit, preemption).
"""
from __future__ import annotations

import contextlib
import datetime
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


class Damaged(ValueError):
  """A file of the suite that exists but cannot be read as a JSON object."""


def read_json_file(path: str) -> dict | None:
  """``path``'s JSON object; None if there is no such file; ``Damaged`` (naming
  the file and why) if it exists but is unreadable, not JSON or not an object."""
  try:
    with open(path) as f:
      text = f.read()
  except (FileNotFoundError, NotADirectoryError):
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise Damaged(f'{path} cannot be read ({type(e).__name__}: '
                  f'{getattr(e, "strerror", None) or e})') from None
  try:
    out = json.loads(text)
  except ValueError as e:
    raise Damaged(f'{path} is damaged ({"empty" if not text.strip() else f"not JSON: {e}"})'
                  ) from None
  if not isinstance(out, dict):
    raise Damaged(f'{path} is damaged (a JSON {type(out).__name__}, not an object)')
  return out


def write_json(path: str, value: dict) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(path + '.tmp', path)


def _lines(log_path: str, offset: int = 0) -> list[str]:
  """The non-empty lines of ``log_path`` from byte ``offset`` (this attempt's output)."""
  try:
    with open(log_path, 'rb') as f:
      f.seek(offset)
      text = f.read().decode(errors='replace')
  except OSError:
    return []
  return [l.strip() for l in text.replace('\r', '\n').split('\n') if l.strip()]


def failure_reason(log_path: str, returncode: int, offset: int = 0) -> str:
  """The log's last ``error:`` line, else its last line (a traceback's exception);
  only the output from byte ``offset`` on (this attempt's) is read."""
  lines = _lines(log_path, offset)
  errors = [l for l in lines if l.startswith('error:')]
  reason = errors[-1] if errors else (lines[-1] if lines else 'no output')
  if returncode < 0:  # Killed before it could say why.
    return f'killed by {signal.Signals(-returncode).name}: {reason[:300]}'
  return f'exit code {returncode}: {reason[:300]}'


def checkout_env(env: dict | None = None) -> dict:
  """``env`` (default: this process's) with this checkout first on ``PYTHONPATH``:
  a run imports the posjax the suite came with, not another installed one."""
  env = dict(os.environ if env is None else env)
  rest = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p and p != REPO]
  env['PYTHONPATH'] = os.pathsep.join([REPO] + rest)
  return env


def execute(cmd: list[str], run_dir: str, preexec: Callable | None = None) -> dict:
  """Runs ``cmd`` (from the repository root, see ``checkout_env``) with its output
  appended to ``run_dir/log.txt`` (a line marks each attempt after the first);
  writes and returns its status.json. ``preexec`` runs in the child before ``cmd``.

  Status ``interrupted`` (not ``finished``) if the runner stopped it (``STOP``), or
  if posjax said it stopped on a signal (``stopped by SIGTERM: checkpoint saved at
  step N``, exit code 0); ``not started`` (nothing written) if the runner was
  already stopping."""
  cmd = [sys.executable if c == 'python' and i == 0 else c for i, c in enumerate(cmd)]
  log, path = os.path.join(run_dir, LOG_FILE), os.path.join(run_dir, STATUS_FILE)
  status = {'status': 'running', 'reason': '', 'log': log, 'command': cmd, 'seconds': 0.0}
  with _CHILD_LOCK:  # STOP.stop_children sees every child started before the stop.
    if STOP.by:
      return {**status, 'status': 'not started', 'log': '',
              'reason': f'the runner was stopped ({STOP.by}) before it started'}
    os.makedirs(run_dir, exist_ok=True)
    write_json(path, status)
    start = time.time()
    with open(log, 'ab') as out:
      if out.tell():  # An earlier attempt's output is above.
        since = datetime.datetime.now().isoformat(timespec='seconds')
        out.write(f'\n=== {since}: run again by the suite runner (the lines above are '
                  'an earlier attempt) ===\n'.encode())
      offset = out.tell()
      try:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                 env=checkout_env(), preexec_fn=preexec)
      except OSError as e:
        status.update(status='failed', reason=f'cannot start {cmd[0]}: {e}')
        write_json(path, status)
        return status
    _CHILD[run_dir] = child
  try:
    while (rc := child.poll()) is None:  # Not wait(): a signal handler may wait too.
      time.sleep(0.2)
  except BaseException:  # KeyboardInterrupt (submitit cancels a local job so), ...
    _terminate(child)
    status.update(status='interrupted', seconds=time.time() - start,
                  reason=_outcome(log, child.returncode or 0, offset, stopped=True)[1]
                  or 'stopped with the job that ran it')
    write_json(path, status)
    raise
  finally:
    with _CHILD_LOCK:
      _CHILD.pop(run_dir, None)
  # Stopped by the runner; or ended while it stops (a Ctrl-C at a terminal reaches
  # the runs too, which may end before the runner's SIGTERM).
  stopped = run_dir in _STOPPED or bool(STOP.by)
  state, reason = _outcome(log, rc, offset, stopped)
  if stopped and state == 'interrupted' and not reason.startswith('stopped by '):
    reason = f'the runner was stopped ({STOP.by or "a signal"}): {reason}'
  status.update(status=state, reason=reason, seconds=time.time() - start)
  write_json(path, status)
  return status


def _outcome(log: str, rc: int, offset: int, stopped: bool) -> tuple[str, str]:
  """(status, reason) of a command that exited with ``rc``: ``interrupted`` if it
  said it stopped on a signal (posjax: exit code 0 after SIGTERM, 130 after Ctrl-C,
  last line ``stopped by SIGTERM: checkpoint saved at step N``) or failed after
  the runner ``stopped`` it (e.g. killed by SIGTERM before posjax handles it)."""
  lines = _lines(log, offset)
  if rc in (0, 130) and lines and lines[-1].startswith('stopped by '):  # 130: Ctrl-C.
    return 'interrupted', lines[-1]
  if rc == 0:
    return 'finished', ''
  return 'interrupted' if stopped else 'failed', failure_reason(log, rc, offset)


def _terminate(child, seconds: float | None = None) -> None:
  """SIGTERM (posjax saves a checkpoint and exits), then SIGKILL after ``seconds``."""
  if child.poll() is None:
    child.terminate()
    try:
      child.wait(STOP_SECONDS if seconds is None else seconds)
    except subprocess.TimeoutExpired:
      child.kill()
      child.wait()


class Stop:
  """Ctrl-C (SIGINT) or SIGTERM on the runner, while ``with STOP.handling():``.

  The handler only records the signal (``by``: 'Ctrl-C' or 'SIGTERM'; ``count``):
  it runs between two bytecodes of the main thread, which may hold a lock. The
  launchers' loops see it: ``launch_local`` sends SIGTERM to its live runs (posjax
  saves a checkpoint and exits; SIGKILL after STOP_SECONDS, or at a second signal)
  and starts no queued run; ``launch_slurm`` cancels the jobs not yet done."""

  def __init__(self):
    self.by, self.count = '', 0

  def request(self, signum, frame=None) -> None:
    del frame
    self.by = self.by or ('Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name)
    self.count += 1

  @contextlib.contextmanager
  def handling(self):
    self.by, self.count = '', 0
    _STOPPED.clear()
    previous = {}
    try:
      for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, self.request)
    except ValueError:  # Not the main thread: the caller handles signals.
      pass
    try:
      yield self
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
      self.by, self.count = '', 0
      _STOPPED.clear()

  def stop_children(self) -> int:
    """SIGTERM to every live run (without waiting); how many there were."""
    with _CHILD_LOCK:
      live = {d: c for d, c in _CHILD.items() if c.poll() is None}
      for run_dir, child in live.items():
        _STOPPED.add(run_dir)
        child.terminate()
    return len(live)

  def kill_children(self) -> None:
    with _CHILD_LOCK:
      for child in _CHILD.values():
        if child.poll() is None:
          child.kill()


STOP = Stop()
_CHILD_LOCK = threading.Lock()
_STOPPED = set()  # The run dirs whose command the runner stopped.


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
    if child is not None:
      _terminate(child)
    return submitit.helpers.DelayedSubmission(self, cmd, run_dir)


def not_started(job, reason: str = '') -> dict:
  """The status of a queued run the runner did not start (nothing is written)."""
  return {'status': 'not started', 'log': '', 'command': job.command, 'seconds': 0.0,
          'reason': reason or f'the runner was stopped ({STOP.by}) before it started'}
