"""posjax.evaluate refuses bad paths and steps in one line (exit 2) before it
evaluates, writes nothing then, never writes --from_workdir, and holds the
trainer's workdir lock (issue "Reliability III", items 3 and 4). One tiny run,
trained once, is the source; bad inputs run as real ``python -m posjax.evaluate``
processes (they stop before anything compiles, ~2 s each)."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from posjax import evaluate
from posjax.training import loop, validation
from posjax.workdir import lock as workdir_lock

from test_train import ROOT, tiny_config
from test_workdir import CONFIG  # A config file that loads tiny_config with overrides.

OVERRIDES = dict(num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, corpus):
  """(run dir with steps 2 and 4, a config file of the same model for the CLI)."""
  d = tmp_path_factory.mktemp('evaluate')
  run = str(d / 'run')
  loop.train_and_evaluate(tiny_config(corpus, **OVERRIDES), run)
  path = d / 'config.py'
  path.write_text(CONFIG.format(test_train=os.path.join(ROOT, 'tests', 'test_train.py'),
                                corpus=corpus, overrides=OVERRIDES))
  return run, str(path)


def _tree(*roots) -> dict:
  """Every path under ``roots`` with its size and mtime (directories too: an entry
  created and removed below them shows)."""
  out = {}
  for root in roots:
    out[root] = os.path.lexists(root)
    for folder, dirs, files in os.walk(root):
      for name in dirs + files:
        st = os.lstat(os.path.join(folder, name))
        out[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
  return out


def _evaluate_cli(config: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', 'posjax.evaluate', f'--config={config}', *args],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                        capture_output=True, text=True, timeout=300)


def _assert_one_line(proc, prefix: str) -> str:
  err = proc.stderr
  assert proc.returncode == 2, err
  assert err.count('\n') == 1 and err.startswith(f'error: {prefix}: '), err
  assert err.count('; allowed: ') == 1 and proc.stdout == '', err  # Never garbled.
  return err


def _prepare(setup: str | None, run: str, d) -> None:
  """What a case needs in the test's directory ``d`` before evaluate runs."""
  if setup == 'file':
    (d / 'file').write_text('x')
  elif setup == 'empty':
    (d / 'empty').mkdir()
  elif setup == 'damaged':  # The run, with step 4's params zeroed in the middle.
    shutil.copytree(run, d / 'damaged')
    for path in glob.glob(str(d / 'damaged' / 'checkpoints' / '4' / 'params' / 'd' / '*')):
      data = bytearray(open(path, 'rb').read())
      data[len(data) // 2:len(data) // 2 + 32] = bytes(32)
      open(path, 'wb').write(data)
  elif setup == 'checkpoints':  # A training run's step (the name is all that counts).
    (d / 'train' / 'checkpoints' / '6').mkdir(parents=True)
  elif setup == 'train metrics':  # A training run that has not checkpointed yet.
    (d / 'train').mkdir()
    (d / 'train' / 'metrics.jsonl').write_text(json.dumps({'step': 2, 'train/loss': 5.0}) + '\n')


# (name, source ('run' = the trained run), workdir, extra flags, set-up, flag, words)
CASES = [
    ('same workdir', 'run', 'run', [], None, '--workdir', 'is --from_workdir'),
    ('workdir inside the run', 'run', 'run/yarn', [], None, '--workdir',
     'is inside --from_workdir'),
    ('missing run', 'missing', 'out', [], None, '--from_workdir', 'does not exist'),
    ('file as workdir', 'run', 'file', [], 'file', '--workdir', 'is a file'),
    ('file as from_workdir', 'file', 'out', [], 'file', '--from_workdir', 'is a file'),
    ('not a run', 'empty', 'out', [], 'empty', '--from_workdir', 'is not a posjax run'),
    ('another model', 'run', 'out', ['--config.model.model_dim=64'], None, '--from_workdir',
     'holds parameters of another shape than --config\'s model'),
    ('missing step', 'run', 'out', ['--step=3'], None, '--step', 'allowed: 2, 4 '),
    ('damaged step', 'damaged', 'out', ['--step=4'], 'damaged', '--step',
     'does not restore (DamagedCheckpointError: '),
    ('a training run as workdir', 'run', 'train', [], 'checkpoints', '--workdir',
     'holds checkpoints of a training run (steps 6)'),
    ('a training curve as workdir', 'run', 'train', [], 'train metrics', '--workdir',
     'holds the metrics of a training run'),
]


@pytest.mark.parametrize('name,source,workdir,extra,setup,flag,words', CASES,
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_before_evaluating_and_writes_nothing(
    trained, tmp_path, name, source, workdir, extra, setup, flag, words):
  run, config = trained
  paths = {'run': run, 'run/yarn': os.path.join(run, 'yarn')}
  source, workdir = (paths.get(p, str(tmp_path / p)) for p in (source, workdir))
  _prepare(setup, run, tmp_path)
  before = _tree(run, str(tmp_path))
  proc = _evaluate_cli(config, f'--from_workdir={source}', f'--workdir={workdir}', *extra)
  assert words in _assert_one_line(proc, flag)
  assert _tree(run, str(tmp_path)) == before  # Nothing new, nothing changed.


def test_a_workdir_in_use_is_refused_naming_the_holder(trained, tmp_path):
  """The trainer's lock: held here (as a training run holds it), evaluate refuses."""
  run, config = trained
  workdir = tmp_path / 'busy'
  workdir.mkdir()
  held = workdir_lock.Lock(str(workdir)).acquire()
  try:
    before = _tree(run, str(workdir))
    proc = _evaluate_cli(config, f'--from_workdir={run}', f'--workdir={workdir}')
    err = _assert_one_line(proc, '--workdir')
    assert f'{workdir} is in use by process {os.getpid()} on ' in err
    assert _tree(run, str(workdir)) == before
  finally:
    held.release()


def test_a_run_that_takes_the_workdir_after_the_checks_is_refused_and_left_alone(
    trained, tmp_path, corpus, monkeypatch):
  """A run that takes the workdir between evaluate's checks and its lock (here:
  while the params are restored): evaluate's own ``Lock.acquire`` refuses, and
  the holder's workdir is left as the holder made it."""
  run, _ = trained
  late, real_restore, holder = tmp_path / 'late', evaluate.restore, []

  def restore_while_a_run_starts(*args):
    late.mkdir()
    holder.append(workdir_lock.Lock(str(late)).acquire())
    return real_restore(*args)

  monkeypatch.setattr(evaluate, 'restore', restore_while_a_run_starts)
  before = _tree(run)
  try:
    with pytest.raises(validation.InputError,
                       match=rf'^--workdir: {late} is in use by process {os.getpid()} '):
      evaluate.evaluate(tiny_config(corpus, **OVERRIDES), run, str(late))
  finally:
    holder[0].release()
  assert os.listdir(late) == [workdir_lock.LOCK_FILE] and _tree(run) == before


def test_an_interrupted_evaluation_leaves_the_workdir_as_found(
    trained, tmp_path, corpus, monkeypatch):
  """Once the lock is evaluate's, a failure (Ctrl-C here) removes what it added:
  the workdir it created, the lock file it added to one a suite had prepared."""
  from posjax.training import steps

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(steps.Trainer, 'evaluate', interrupted)
  run, _ = trained
  (tmp_path / 'suite_run').mkdir()
  (tmp_path / 'suite_run' / 'log.txt').write_text('the launcher writes this first\n')
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(tiny_config(corpus, **OVERRIDES), run, str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(tiny_config(corpus, **OVERRIDES), run, str(tmp_path / 'suite_run'))
  assert os.listdir(tmp_path / 'suite_run') == ['log.txt']


def test_step_picks_a_checkpoint_and_a_rerun_replaces_its_results(trained, tmp_path, corpus):
  run, _ = trained
  config = tiny_config(corpus, **OVERRIDES)
  before = _tree(run)
  workdir = tmp_path / 'eval'
  at_2 = evaluate.evaluate(config, run, str(workdir), step=2)
  assert [json.loads(l)['step'] for l in open(workdir / 'metrics.jsonl')] == [2]
  events, = glob.glob(str(workdir / 'events.out.tfevents.*'))
  os.rename(events, workdir / 'events.out.tfevents.1.older')  # (Not rewritten in the same second.)
  newest = evaluate.evaluate(config, run, str(workdir))  # A rerun: the newest step, 4.
  records = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in records] == [4]
  assert records[0]['eval/loss@16'] == newest['eval/loss@16']
  assert at_2['eval/loss@16'] != newest['eval/loss@16']
  assert len(glob.glob(str(workdir / 'events.out.tfevents.*'))) == 1  # The older one went.
  assert not os.path.exists(workdir / 'events.out.tfevents.1.older')
  assert os.path.exists(workdir / 'config.json') and _tree(run) == before
  assert not workdir_lock.in_use(str(workdir))  # Released.
