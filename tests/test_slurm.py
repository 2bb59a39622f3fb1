"""The slurm launcher against a real single-node SLURM (Debian's slurmctld, slurmd and
munge, started here in a temporary directory). Slow, and skipped where those are not
installed or the tests do not run as root (slurmd must):

  apt-get install slurmctld slurmd slurm-client munge
  python -m pytest -q tests/test_slurm.py --runslow
"""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from posjax.suites import launchers, runner

from test_experiments import TINY, suite

pytestmark = pytest.mark.slow
DAEMONS = ('munged', 'slurmctld', 'slurmd', 'sbatch')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _conf(d: str) -> str:
  node = subprocess.run(['slurmd', '-C'], capture_output=True, text=True).stdout.split()[0]
  return '\n'.join([
      'ClusterName=posjaxtest', f'SlurmctldHost={node.split("=")[1]}',
      'SlurmUser=root', 'SlurmdUser=root', 'AuthType=auth/munge', 'CredType=cred/munge',
      f'AuthInfo=socket={d}/munge.sock', f'SlurmctldPort={_free_port()}',
      f'SlurmdPort={_free_port()}', f'StateSaveLocation={d}/state',
      f'SlurmdSpoolDir={d}/spool', f'SlurmctldPidFile={d}/slurmctld.pid',
      f'SlurmdPidFile={d}/slurmd.pid', f'SlurmctldLogFile={d}/slurmctld.log',
      f'SlurmdLogFile={d}/slurmd.log', 'ProctrackType=proctrack/linuxproc',
      'TaskPlugin=task/none', 'SelectType=select/cons_tres', 'SelectTypeParameters=CR_Core',
      'JobAcctGatherType=jobacct_gather/none', 'AccountingStorageType=accounting_storage/none',
      'MpiDefault=none', 'ReturnToService=2', 'KillWait=5', 'OverTimeLimit=0', f'{node} State=UNKNOWN',
      'PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP', ''])


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
  """A running one-node cluster; SLURM_CONF points the clients (and submitit) at it."""
  if os.geteuid() != 0 or not all(shutil.which(b) for b in DAEMONS):
    pytest.skip('needs root and Debian\'s slurmctld, slurmd, slurm-client and munge')
  d = str(tmp_path_factory.mktemp('slurm'))
  os.chmod(d, 0o700)  # munged refuses a key in a directory others can write.
  for sub in ('state', 'spool'):
    os.makedirs(os.path.join(d, sub))
  with open(os.path.join(d, 'munge.key'), 'wb') as f:
    f.write(os.urandom(128))
  os.chmod(os.path.join(d, 'munge.key'), 0o600)
  with open(os.path.join(d, 'slurm.conf'), 'w') as f:
    f.write(_conf(d))
  env = {**os.environ, 'SLURM_CONF': os.path.join(d, 'slurm.conf')}
  subprocess.run(['munged', '--force', f'--socket={d}/munge.sock', f'--key-file={d}/munge.key',
                  f'--log-file={d}/munged.log', f'--pid-file={d}/munged.pid',
                  f'--seed-file={d}/munged.seed'], check=True)
  subprocess.run(['slurmctld'], env=env, check=True)
  subprocess.run(['slurmd'], env=env, check=True)
  old = os.environ.get('SLURM_CONF')
  os.environ['SLURM_CONF'] = env['SLURM_CONF']
  try:
    for _ in range(60):  # The node registers within a few seconds.
      out = subprocess.run(['sinfo', '-h', '-o', '%t'], capture_output=True, text=True).stdout
      if out.strip() in ('idle', 'mix', 'alloc'):
        break
      time.sleep(1)
    else:
      pytest.fail(f'the node never came up: {out!r}; see {d}/slurmctld.log')
    yield d
  finally:
    if old is None:
      os.environ.pop('SLURM_CONF', None)
    else:
      os.environ['SLURM_CONF'] = old
    for name in ('slurmd', 'slurmctld', 'munged'):
      try:
        os.kill(int(open(os.path.join(d, f'{name}.pid')).read()), 15)
      except (OSError, ValueError):
        pass


def test_suite_runs_as_a_slurm_job_array(cluster, corpus, tmp_path, capsys):
  """The tiny extrapolation suite through ``--launcher=slurm``: sbatch, one array job
  per run, each a posjax run that resumes and reports like a local one."""
  d = str(tmp_path / 'suite')
  argv = ['x', f'--workdir={d}', '--only=alibi,rope', '--launcher=slurm',
          '--slurm_gpus_per_node=0', '--slurm_cpus_per_task=1', '--slurm_time_min=20',
          f'--config.data.path={corpus}', *TINY]
  assert runner.main(suite('extrapolation'), argv) == 0
  out = capsys.readouterr().out
  assert 'summary: 2 finished, 0 failed' in out
  for name in ('alibi', 'rope'):
    status = json.load(open(os.path.join(d, name, 'status.json')))
    assert status['status'] == 'finished'
    assert os.path.isdir(os.path.join(d, name, 'checkpoints', '4'))
  jobs = os.listdir(os.path.join(d, 'slurm'))
  assert any('_0_' in f and f.endswith('.out') for f in jobs), jobs  # An array task's log.
  assert '| alibi |' in open(os.path.join(d, 'results.md')).read()
  assert runner.main(suite('extrapolation'), argv) == 0  # Nothing left to submit.
  assert 'skipped (already finished: alibi, rope)' in capsys.readouterr().out



def _job(tmp_path, name: str, code: str):
  return runner.Job(runner.Run(name, 'configs/lm.py'), str(tmp_path / name),
                         ['python', '-c', code], total=1)


# Stands in for a posjax run: stops on SIGTERM (saving nothing), resumes when started again.
RESUMABLE = """
import os, signal, sys, time
mark = os.path.join({d!r}, 'started')
if os.path.exists(mark):
  print('resumed'); sys.exit(0)
open(mark, 'w').close()
signal.signal(signal.SIGTERM, lambda *a: (open(mark + '.stopped', 'w').close(), sys.exit(0)))
time.sleep(600)
"""


def test_a_timed_out_run_is_stopped_requeued_and_resumed(cluster, tmp_path):
  """SLURM signals the time limit; the run gets SIGTERM (a posjax run checkpoints),
  submitit requeues the array task and it runs again, now to the end."""
  d = str(tmp_path / 'slow')
  jobs = [_job(tmp_path, 'slow', RESUMABLE.format(d=d)), _job(tmp_path, 'quick', 'pass')]
  executor = launchers.slurm_executor(str(tmp_path / 'slurm'), 'slurm', timeout_min=2,
                                      cpus_per_task=1, slurm_signal_delay_s=60)
  out = launchers.launch_slurm(jobs, launchers.Progress(jobs), executor)
  assert out['quick']['status'] == 'finished'
  assert out['slow']['status'] == 'finished', out['slow']
  assert os.path.exists(os.path.join(d, 'started.stopped'))
  assert open(os.path.join(d, 'log.txt')).read() == 'resumed\n'


def test_a_job_that_leaves_the_queue_without_a_result_fails(cluster, tmp_path, monkeypatch):
  """This cluster has no accounting (no sacct), as some do not: the launcher finds
  the dead job (here: its submitit process killed, as a node failure would) from
  squeue and fails it with SLURM's reason, not a hang."""
  monkeypatch.setattr(launchers.SlurmQueue, 'every', 2.0)
  jobs = [_job(tmp_path, 'slow', 'import time; time.sleep(600)')]
  executor = launchers.slurm_executor(str(tmp_path / 'slurm'), 'slurm', timeout_min=20,
                                      cpus_per_task=1)
  kill = subprocess.Popen(['bash', '-c', 'sleep 15; pkill -KILL -f "^[^ ]*python[^ ]* -u -m submitit.core._submit"'])
  start = time.time()
  out = launchers.launch_slurm(jobs, launchers.Progress(jobs), executor)
  kill.wait()
  assert out['slow']['status'] == 'failed' and 'Killed' in out['slow']['reason'], out
  assert json.load(open(tmp_path / 'slow' / 'status.json'))['status'] == 'failed'
  assert time.time() - start < 120
