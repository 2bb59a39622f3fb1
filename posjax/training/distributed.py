"""Multi-process runs: ``jax.distributed`` start-up and preemption agreed by all
processes.

``maybe_initialize(config)`` starts ``jax.distributed`` when the run is
multi-process: from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID`` when any is set, else (``config.multihost=True``) from the
cluster JAX detects (Cloud TPU, SLURM, Open MPI). On CPU the processes' devices
talk through JAX's default CPU collectives (gloo).

``Preemption`` tells the train loop, at the same step on every process, that the
job was asked to stop, so every process saves the same step and exits. With
``jax.distributed`` that is JAX's preemption sync manager (through Orbax's
``CheckpointManager.reached_preemption``): its own SIGTERM handler, installed by
``jax.distributed.initialize``, tells the coordination service, which agrees a
step with every process. A single process keeps a plain SIGTERM flag. Ctrl-C
(SIGINT) asks for the same stop, with exit code 130 (SIGTERM: 0); with several
processes it is passed on as a SIGTERM to this process, so the stop is agreed too.
A second Ctrl-C interrupts at once.
"""
from __future__ import annotations

import itertools
import os
import signal

import jax

ENV_VARS = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')
_ALLOWED = ('JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and '
            'JAX_PROCESS_ID=0..N-1 all set')


def _int_env(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'{name}: got {value!r}; allowed: an integer') from None


def env_args(environ=os.environ) -> dict:
  """``jax.distributed.initialize`` keywords from the environment ({} if unset).

  All three variables are needed together; a missing or malformed one is a
  ValueError naming it.
  """
  values = {v: environ.get(v, '').strip() for v in ENV_VARS}
  if not any(values.values()):
    return {}
  given = ', '.join(v for v in ENV_VARS if values[v])
  for name, value in values.items():
    if not value:
      raise ValueError(f'{name}: not set (but {given} is); allowed: {_ALLOWED}')
  address = values['JAX_COORDINATOR_ADDRESS']
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'JAX_COORDINATOR_ADDRESS: got {address!r}; allowed: host:port '
                     '(process 0 listens on the port)')
  n = _int_env('JAX_NUM_PROCESSES', values['JAX_NUM_PROCESSES'])
  i = _int_env('JAX_PROCESS_ID', values['JAX_PROCESS_ID'])
  if n < 1:
    raise ValueError(f'JAX_NUM_PROCESSES: got {n}; allowed: a positive integer')
  if not 0 <= i < n:
    raise ValueError(f'JAX_PROCESS_ID: got {i}; allowed: 0..{n - 1} '
                     f'(JAX_NUM_PROCESSES={n})')
  return dict(coordinator_address=address, num_processes=n, process_id=i)


def maybe_initialize(config) -> None:
  """``jax.distributed.initialize`` for multi-process runs (idempotent).

  Must run before anything initialises a JAX backend (``jax.devices()``, a
  computation): ``loop.train_and_evaluate`` calls it first.
  """
  if jax.distributed.is_initialized():
    return
  kwargs = env_args()
  if kwargs:  # Explicit: no cluster auto-detection (SLURM's would hide GPUs).
    jax.distributed.initialize(**kwargs, cluster_detection_method='deactivate')
  elif config.get('multihost', False):
    try:
      jax.distributed.initialize()
    except ValueError as e:  # Auto-detection found no cluster.
      raise ValueError(f'multihost: jax.distributed found no cluster ({e}); allowed: '
                       f'Cloud TPU, SLURM or Open MPI, or {_ALLOWED}') from None


def _synchronised() -> bool:
  """True when JAX's preemption sync manager runs (multi-process)."""
  from jax._src import distributed as jax_distributed  # No public accessor.
  return jax_distributed.global_state.preemption_sync_manager is not None


# JAX's sync manager keeps the last number each process passed it; when a
# SIGTERM is reported anywhere, all processes agree on (the largest) + 1 and
# ``reached`` is True where that number comes up. Passing a count of calls (equal
# on every process: each calls ``reached`` once per step) rather than the step
# keeps a resumed run right: a SIGTERM before its first step agrees on 1, which
# a step number (start + 1) would never equal.
_CALLS = itertools.count(1)


class Preemption:
  """``with Preemption(mngr) as p: ... if p.reached(step): save and exit``.

  Call ``reached`` once per step on every process: it returns True at the same
  step on all of them once any was sent SIGTERM.
  """

  def __init__(self, mngr):
    self.mngr = mngr
    self.requested = False  # The single-process stop flag.
    self.synchronised = False
    self.signal_name, self.exit_code = 'SIGTERM', 0
    self._previous = {}

  def __enter__(self):
    self.synchronised = _synchronised()
    handlers = {signal.SIGINT: self._interrupt}
    if not self.synchronised:  # A Python handler would replace the sync manager's.
      handlers[signal.SIGTERM] = self._handle
    try:
      self._previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    except ValueError:  # Not the main thread: no signal handling.
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def _interrupt(self, signum, frame):
    self.signal_name, self.exit_code = 'Ctrl-C', 130
    signal.signal(signal.SIGINT, signal.default_int_handler)  # A second one: at once.
    if self.synchronised:
      os.kill(os.getpid(), signal.SIGTERM)  # To the sync manager: every process stops.
    else:
      self._handle(signum, frame)

  def reached(self, step: int) -> bool:
    """True once a stop was requested (the same step on every process)."""
    del step  # The sync manager counts calls (see _CALLS), not steps.
    if self.synchronised:
      return self.mngr.reached_preemption(next(_CALLS))
    return self.requested

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    return False
