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

``PeerWatch`` ends a process whose peer died (killed, out of memory, its host
gone) within ``config.peer_timeout_seconds``, with one line naming the lost
process, instead of leaving it in a collective that never returns until JAX's
coordination service aborts it with a core dump.
"""
from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time

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
  # JAX's own heartbeat (abort with a dump) only well after PeerWatch's line.
  heartbeat = dict(heartbeat_timeout_seconds=max(100, 3 * _peer_timeout(config)))
  if kwargs:  # Explicit: no cluster auto-detection (SLURM's would hide GPUs).
    jax.distributed.initialize(**kwargs, **heartbeat, cluster_detection_method='deactivate')
  elif config.get('multihost', False):
    try:
      jax.distributed.initialize(**heartbeat)
    except ValueError as e:  # Auto-detection found no cluster.
      raise ValueError(f'multihost: jax.distributed found no cluster ({e}); allowed: '
                       f'Cloud TPU, SLURM or Open MPI, or {_ALLOWED}') from None


def _stop_process(what: str) -> None:
  """One ``error:`` line and exit 1, from any thread, skipping JAX's shutdown
  (which aborts once a peer is lost)."""
  sys.stderr.write(f'\nerror: distributed: {what}; process {jax.process_index()} stops '
                   'too; allowed: rerun every process, which resumes from the last '
                   'checkpoint\n')
  sys.stderr.flush()
  os._exit(1)


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


def _peer_timeout(config) -> int:
  return int(config.get('peer_timeout_seconds', 60))  # Validated positive.


class PeerWatch:
  """``with PeerWatch(config): train``: in a multi-process run, every process
  bumps its own counter in the coordination service's key-value store each
  second, and a daemon thread watches the others'. A peer whose counter stood
  still for ``peer_timeout_seconds`` (and that did not finish), or a coordinator
  that stopped answering, ends this process: one ``error:`` line, exit 1. The
  main thread may be inside a collective that will never return, so the exit is
  ``os._exit``. A clean exit (finished, or preempted and saved) marks the process
  done, so peers that finish later do not take it for lost."""

  PREFIX = 'posjax/peer_watch/'

  def __init__(self, config):
    self.timeout = _peer_timeout(config)
    self.stopped = threading.Event()
    self.client, self.watching = None, False

  def __enter__(self):
    from jax._src import distributed as jax_distributed  # No public accessor.
    self.client = jax_distributed.global_state.client
    self.watching = self.client is not None and jax.process_count() > 1
    if self.watching:
      threading.Thread(target=self._watch, name='posjax-peer-watch', daemon=True).start()
    return self

  def __exit__(self, kind, value, tb):
    if self.watching and kind is not None and issubclass(kind, jax.errors.JaxRuntimeError):
      # A collective failed (gloo: "connection closed by peer"): a peer is likely
      # gone; the watch names it within the timeout. (Raising on would end in
      # JAX's shutdown, which aborts with a dump once a peer is lost.)
      time.sleep(self.timeout + 2)
      _stop_process(f'a collective failed ({" ".join(str(value).split())[:160]})')
    clean = kind is None or (kind is SystemExit and value.code in (0, 130, None))
    if self.watching and clean:
      try:
        self.client.key_value_set(f'{self.PREFIX}done/{jax.process_index()}', '1', True)
      except Exception:  # A coordinator already gone: nothing to tell.
        pass
    self.stopped.set()
    return False

  def _watch(self) -> None:
    me, n = jax.process_index(), jax.process_count()
    last = {p: (None, time.monotonic()) for p in range(n) if p != me}
    beat = 0
    while not self.stopped.wait(1.0):
      beat += 1
      try:
        self.client.key_value_set(f'{self.PREFIX}beat/{me}', str(beat), True)
        for p, (value, since) in last.items():
          now = self._read(f'beat/{p}')
          if now != value:
            last[p] = (now, time.monotonic())
          elif time.monotonic() - since > self.timeout and self._read(f'done/{p}') is None:
            _stop_process(f'process {p} of {n} stopped answering (no heartbeat for '
                       f'{self.timeout} s, config.peer_timeout_seconds)')
      except Exception as e:  # The coordination service itself is gone.
        if not self.stopped.is_set():
          _stop_process(f'the coordinator (process 0 of {n}) stopped answering '
                     f'({type(e).__name__}: {" ".join(str(e).split())[:120]})')

  def _read(self, key: str) -> str | None:
    try:
      return self.client.key_value_try_get(self.PREFIX + key)
    except Exception as e:
      if 'NOT_FOUND' in str(e) or 'not found' in str(e).lower():
        return None
      raise

