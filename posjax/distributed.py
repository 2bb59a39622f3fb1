"""Multi-process runs: ``jax.distributed`` start-up and preemption agreed by all
processes.

``maybe_initialize(config)`` starts ``jax.distributed`` when the run is
multi-process; ``Preemption`` tells the train loop, at the same step on every
process, that the job was asked to stop (SIGTERM), so every host saves the
same step and exits.
"""
from __future__ import annotations

import os
import signal

import jax


def maybe_initialize(config) -> None:
  """``jax.distributed.initialize()`` for multi-process runs."""
  wanted = config.get('multihost', False) or any(
      os.environ.get(v) for v in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES'))
  if wanted and not jax.distributed.is_initialized():
    jax.distributed.initialize()


class Preemption:
  """``with Preemption(mngr) as p: ... if p.reached(step): save and exit``."""

  def __init__(self, mngr=None):
    self.mngr = mngr
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: no signal handling.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """True once a stop was requested (the same step on every process)."""
    del step
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
