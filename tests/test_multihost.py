"""Two processes on localhost run the README's multi-host launch: environment
variables for ``jax.distributed`` (local coordinator, CPU gloo collectives), 4
fake CPU devices each, a (data, fsdp, tensor) = (2, 2, 2) mesh over both.

SIGTERM to one process makes both save the same step (JAX's preemption sync
manager) and exit 0; the rerun resumes and ends with the parameters of one
8-device process fed the same global batches: process 0's shard of the data,
then process 1's, which must differ (each process reads its own shard).
"""
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from posjax.training import distributed, loop
from posjax.training.steps import Trainer
from posjax.workdir import checkpoints, restore, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
OVERRIDES = {  # On top of configs/lm.py:runlocal, as command-line flags.
    'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2,
    'num_train_steps': STEPS, 'warmup_steps': 1, 'log_every_steps': STEPS,
    'eval_every_steps': 100, 'checkpoint_every_steps': 100,
    'batch_size': 16, 'eval_batch_size': 8, 'num_eval_batches': 1,
    'seq_len': 16, 'eval_lengths': (16,), 'model.num_layers': 1, 'model.num_heads': 4,
    'model.model_dim': 32, 'model.mlp_dim': 64, 'model.max_len': 16,
}
TIMEOUT = 180  # Seconds per launch: a hung collective fails the test instead.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(corpus: str, workdir: str, jit_cache: str, **overrides) -> list[subprocess.Popen]:
  """``python -m posjax.main`` as process 0 and 1 of a 2-process job."""
  flags = [f'--config.{k}={v}' for k, v in {**OVERRIDES, **overrides}.items()]
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS='--xla_force_host_platform_device_count=4',
               JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(i), JAX_COMPILATION_CACHE_DIR=jit_cache)
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'posjax.main', '--config=configs/lm.py:runlocal',
         f'--config.data.path={corpus}', f'--workdir={workdir}', *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs) -> list[tuple[int, str]]:
  """(exit code, stderr) of each process; kills both (SIGKILL: SIGTERM would
  only ask them to save) if they are not done within TIMEOUT."""
  deadline, out = time.monotonic() + TIMEOUT, []
  try:
    for p in procs:
      _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1))
      out.append((p.returncode, err))
  except subprocess.TimeoutExpired:
    tails = []
    for p in procs:
      p.kill()
      tails.append(p.communicate()[1][-2000:])
    pytest.fail(f'2-process run still running after {TIMEOUT} s:\n' + '\n'.join(tails))
  return out


def _steps(workdir) -> list[int]:
  return sorted(int(s) for s in os.listdir(checkpoints.checkpoint_dir(workdir)) if s.isdigit())


@pytest.fixture(scope='module')
def jit_cache(tmp_path_factory):
  """The 2-process programs' own compilation cache: cold for the first run (so
  it cannot finish before the SIGTERM is agreed), warm for the rerun."""
  return str(tmp_path_factory.mktemp('multihost_jit'))


@pytest.fixture(scope='module')
def preempted(corpus, jit_cache, tmp_path_factory):
  """A 2-process run sent SIGTERM (process 1 only) as soon as it has started
  (config.json written), which is before or during its first steps."""
  workdir = str(tmp_path_factory.mktemp('multihost') / 'run')
  procs = _launch(corpus, workdir, jit_cache)
  config_json = os.path.join(workdir, run_config.CONFIG_FILE)
  deadline = time.monotonic() + TIMEOUT
  # Process 0 writes config.json after jax.distributed is up on both processes.
  while not os.path.exists(config_json) and time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  return workdir, _finish(procs)


def test_sigterm_to_one_process_saves_one_step_on_both_and_exits_zero(preempted):
  workdir, results = preempted
  for i, (code, err) in enumerate(results):
    assert code == 0, f'process {i} exited {code}:\n{err[-3000:]}'
  saved = [re.findall(r'saved a checkpoint at step (\d+)', err) for _, err in results]
  assert saved[0] == saved[1] and len(saved[0]) == 1, saved
  step = int(saved[0][0])
  assert 1 <= step <= STEPS
  assert _steps(workdir) == [step]  # The only checkpoint: periodic ones are off.


def _config(corpus):
  spec = importlib.util.spec_from_file_location('lm_config', os.path.join(ROOT, 'configs', 'lm.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config('runlocal')
  cfg.data.path = corpus
  for k, v in OVERRIDES.items():
    *path, last = k.split('.')
    target = cfg
    for p in path:
      target = target[p]
    target[last] = v
  return cfg


def _single_process_params(corpus, tmp_path):
  """STEPS steps on this process's 8 devices, each global batch made of the two
  processes' shards (process 0's rows first, as in the 2-process mesh)."""
  config, mcfg, task = loop.prepare(_config(corpus), str(tmp_path / 'reference'))
  trainer = Trainer(config, mcfg, task)
  shards = [task.train_iterator(p, 2) for p in range(2)]
  state = trainer.init_state()
  for _ in range(STEPS):
    local = [next(it) for it in shards]
    assert not np.array_equal(local[0]['inputs'], local[1]['inputs'])
    state, _ = trainer.train_step(state, {k: np.concatenate([b[k] for b in local])
                                          for k in local[0]})
  return jax.device_get(state['params'])


def test_resumed_two_process_run_matches_one_process(preempted, corpus, jit_cache, tmp_path):
  workdir, _ = preempted
  stopped = _steps(workdir)[-1]
  rerun = _finish(_launch(corpus, workdir, jit_cache))
  for i, (code, err) in enumerate(rerun):
    assert code == 0, f'process {i} exited {code}:\n{err[-3000:]}'
  assert f'resumed from step {stopped}' in rerun[0][1]
  got = restore.load_for_analysis(workdir)
  assert got.step == STEPS
  want = _single_process_params(corpus, tmp_path)
  assert jax.tree.structure(got.params) == jax.tree.structure(want)
  for x, y in zip(jax.tree.leaves(got.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


PEER_TIMEOUT = 4


def test_a_killed_peer_ends_the_survivor_with_one_line(corpus, jit_cache, tmp_path):
  """kill -9 of process 1 mid-training: process 0, blocked in a collective, stops
  within ``peer_timeout_seconds`` (plus a poll) with one line naming the lost
  process, exit 1, no abort dump. (When the coordinator itself dies, JAX's client
  aborts at once, before any Python code can run: not covered.)"""
  victim = 1
  workdir = str(tmp_path / 'run')
  procs = _launch(corpus, workdir, jit_cache, num_train_steps=100_000, log_every_steps=1,
                  peer_timeout_seconds=PEER_TIMEOUT)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  deadline = time.monotonic() + TIMEOUT
  while not (os.path.exists(metrics) and os.path.getsize(metrics)) and \
      time.monotonic() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.1)
  procs[victim].kill()
  killed_at = time.monotonic()
  survivor = procs[1 - victim]
  try:
    _, err = survivor.communicate(timeout=PEER_TIMEOUT + 30)
  finally:
    for p in procs:
      p.kill()
      p.communicate()
  waited = time.monotonic() - killed_at
  lost = f'process {victim} of 2 stopped answering'
  assert survivor.returncode == 1, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(f'error: distributed: {lost}'), err[-3000:]
  assert 'Traceback' not in err and 'Fatal' not in err and 'F1' not in err, err[-3000:]
  assert waited < PEER_TIMEOUT + 25, waited


@pytest.mark.parametrize('env, message', [
    ({'JAX_NUM_PROCESSES': '2'}, r'^JAX_COORDINATOR_ADDRESS: not set \(but JAX_NUM_PROCESSES'),
    ({'JAX_COORDINATOR_ADDRESS': 'localhost:1234', 'JAX_NUM_PROCESSES': '2'},
     r'^JAX_PROCESS_ID: not set'),
    ({'JAX_COORDINATOR_ADDRESS': 'localhost', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '0'}, r"^JAX_COORDINATOR_ADDRESS: got 'localhost'; allowed: host:port"),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': 'two',
      'JAX_PROCESS_ID': '0'}, r"^JAX_NUM_PROCESSES: got 'two'; allowed: an integer"),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '2'}, r'^JAX_PROCESS_ID: got 2; allowed: 0..1'),
])
def test_bad_environment_is_a_one_line_error_naming_the_variable(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.env_args(env)


def test_environment_gives_explicit_initialize_arguments():
  assert distributed.env_args({}) == {}
  assert distributed.env_args({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234',
                               'JAX_NUM_PROCESSES': '4', 'JAX_PROCESS_ID': '3'}) == dict(
      coordinator_address='10.0.0.1:1234', num_processes=4, process_id=3)
