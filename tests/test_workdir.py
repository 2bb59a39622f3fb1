"""A workdir has one writer and must be a writable directory (issue 10 items 2, 8):
real ``python -m posjax.main`` processes contend for one workdir."""
import os
import signal
import subprocess
import sys
import time

import pytest

from posjax.training import loop, validation
from posjax.workdir import lock as workdir_lock

from test_train import ROOT, tiny_config

CONFIG = """import importlib.util

def get_config():
  spec = importlib.util.spec_from_file_location('test_train', {test_train!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.tiny_config({corpus!r}, **{overrides!r})
"""


def test_a_second_run_on_a_busy_workdir_is_refused_and_a_killed_one_does_not_block(
    corpus, tmp_path):
  path = tmp_path / 'config.py'
  path.write_text(CONFIG.format(test_train=os.path.join(ROOT, 'tests', 'test_train.py'),
                                corpus=corpus, overrides=dict(num_train_steps=3)))
  run = tmp_path / 'run'
  lock = run / workdir_lock.LOCK_FILE
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'posjax.main', f'--config={path}', f'--workdir={run}']
  # The holder: a long run (1e6 steps) whose lock we wait for. It saves no
  # checkpoint before it is killed, whatever the machine's speed, so the third run
  # (3 steps) starts afresh.
  holder = subprocess.Popen(cmd + ['--config.num_train_steps=1000000',
                                   '--config.checkpoint_every_steps=1000000'],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().startswith('process')):
      assert holder.poll() is None and time.monotonic() < deadline, holder.stderr.read()
      time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2, second.stderr
    assert second.stderr.count('\n') == 1, second.stderr
    assert second.stderr.startswith(f'error: workdir: {run} is in use by process '
                                    f'{holder.pid} on '), second.stderr
  finally:
    holder.send_signal(signal.SIGKILL)  # No cleanup: the lock file stays behind.
    holder.wait()
  assert lock.exists()
  third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert third.returncode == 0, third.stderr


def test_the_lock_is_exclusive_and_released(tmp_path):
  first = workdir_lock.Lock(str(tmp_path)).acquire()
  with pytest.raises(ValueError, match=rf'^workdir: {tmp_path} is in use by process '
                     rf'{os.getpid()} on .* since '):
    workdir_lock.Lock(str(tmp_path)).acquire()
  first.release()
  workdir_lock.Lock(str(tmp_path)).acquire().release()


@pytest.mark.parametrize('case,message', [
    ('a_file', 'is a file'), ('below_a_file', 'is not writable'),
    ('read_only', 'is not writable')])
def test_an_unusable_workdir_is_a_one_line_error(corpus, tmp_path, case, message):
  (tmp_path / 'f').write_text('x')
  target = {'a_file': tmp_path / 'f', 'below_a_file': tmp_path / 'f' / 'run',
            'read_only': '/proc/1/posjax_run'}[case]  # procfs: read-only even for root.
  with pytest.raises(validation.ConfigError, match=rf'^workdir: .*{message}'):
    loop.prepare(tiny_config(corpus), str(target))


def test_ctrl_c_saves_a_checkpoint_and_exits_130_with_one_line(corpus, tmp_path):
  path = tmp_path / 'config.py'
  path.write_text(CONFIG.format(test_train=os.path.join(ROOT, 'tests', 'test_train.py'),
                                corpus=corpus, overrides=dict(num_train_steps=1000000,
                                                              checkpoint_every_steps=50)))
  run = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'posjax.main', f'--config={path}', f'--workdir={run}']
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 120
  while not (run / 'metrics.jsonl').exists() or not (run / 'metrics.jsonl').read_text():
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
    time.sleep(0.05)  # Training: the first steps are logged.
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  last = err.strip().splitlines()[-1]
  assert last.startswith('stopped by Ctrl-C: checkpoint saved at step '), err
  assert 'Traceback' not in err, err
  step = int(last.rsplit(' ', 1)[1])
  assert (run / 'checkpoints' / str(step)).is_dir()
