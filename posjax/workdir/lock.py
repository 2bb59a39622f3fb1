"""A run's workdir: usable before anything is written, and one writer at a time.

``check_usable`` refuses a workdir that is a regular file or cannot be written.
``Lock`` holds an exclusive ``flock`` on ``<workdir>/.posjax.lock`` for the life
of the run (process 0 of a multi-process run): a second run on the same workdir
gets a one-line error naming the process that holds it. The kernel releases the
lock when its holder dies, so a run killed with ``kill -9`` never blocks the next.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket

LOCK_FILE = '.posjax.lock'


def check_usable(workdir: str) -> None:
  """ValueError('workdir: ...') if ``workdir`` cannot hold a run."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f'workdir: {path} is a file; allowed: a directory (new, or a '
                     'previous run of the same experiment)')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f'workdir: {path} is not writable ({existing} is read-only or not '
                     'a directory); allowed: a directory this user can write')


class Lock:
  """``Lock(workdir).acquire()``: ValueError naming the holder if it is taken."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.fd = None

  def acquire(self) -> 'Lock':
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
      os.close(fd)
      raise ValueError(f'workdir: {os.path.dirname(self.path)} is in use by {holder}; '
                       'allowed: one run per workdir (wait for it or stop it, or use '
                       'another --workdir)') from None
    os.ftruncate(fd, 0)
    since = datetime.datetime.now().isoformat(timespec='seconds')
    os.write(fd, f'process {os.getpid()} on {socket.gethostname()} since {since}'.encode())
    self.fd = fd
    return self

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)  # Closing the descriptor releases the flock.
      self.fd = None


def in_use(workdir: str) -> bool:
  """True while a process holds ``workdir``'s lock (a run whose runner was
  killed leaves the file but not the lock)."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  if not os.path.exists(path):
    return False
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)
