"""The suite runner (posjax.suites.runner / posjax.suites.launchers), posjax.evaluate and the
suites in experiments/: skip / resume / refuse, failures, submitit's local
executor, and one end-to-end suite at a tiny scale (two encodings, a few steps)."""
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from posjax.suites import launchers, runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.num_train_steps=4', '--config.eval_every_steps=4',
        '--config.checkpoint_every_steps=4', '--config.log_every_steps=2',
        '--config.warmup_steps=1', '--config.seq_len=16', '--config.eval_lengths=16,32',
        '--config.model.max_len=32', '--config.model.num_layers=1',
        '--config.model.model_dim=32', '--config.model.mlp_dim=64', '--config.model.num_heads=2']


def suite(name: str):
  spec = importlib.util.spec_from_file_location(f'suite_{name}',
                                                os.path.join(REPO, 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def finished(tmp_path_factory, corpus):
  """The extrapolation suite, alibi and rope, 4 steps each: (dir, argv, exit code, output)."""
  d = str(tmp_path_factory.mktemp('suite'))
  argv = ['x', f'--workdir={d}', '--only=alibi,rope', '--parallel=2',
          f'--config.data.path={corpus}', *TINY]
  code = runner.main(suite('extrapolation'), argv)
  return d, argv, code


def test_suite_end_to_end(finished):
  d, _, code = finished
  assert code == 0
  for name in ('alibi', 'rope'):
    status = json.load(open(os.path.join(d, name, 'status.json')))
    assert status['status'] == 'finished' and status['command'][2] == 'posjax.main'
    assert os.path.isdir(os.path.join(d, name, 'checkpoints', '4'))
  saved = json.load(open(os.path.join(d, 'suite.json')))
  assert saved['suite'] == 'extrapolation' and saved['scale'] == 'local'
  assert 'learned' in saved['runs'] and saved['overrides']['seq_len'] == '16'
  md = open(os.path.join(d, 'results.md')).read()
  row = next(l for l in md.splitlines() if l.startswith('| alibi |'))
  assert all(float(x) > 1 for x in row.split('|')[2:4])  # Perplexity at 16 and 32.
  assert '| sinusoidal | missing | missing |' in md  # Not selected: shown, not dropped.
  assert os.path.getsize(os.path.join(d, 'perplexity.png')) > 1000
  assert os.path.exists(os.path.join(d, 'results.csv'))


def test_report_of_selected_runs(finished, tmp_path):
  """``--report --only`` tables the selected runs alone; the others are not rows."""
  d, argv, _ = finished
  copy = tmp_path / 'suite'
  shutil.copytree(d, copy)
  argv = [a.replace(d, str(copy)) for a in argv if not a.startswith('--only')]
  assert runner.main(suite('extrapolation'), argv + ['--report', '--only=alibi']) == 0
  perplexity = (copy / 'results.md').read_text().split('### Bits per byte')[0]
  rows = [l.split('|')[1].strip() for l in perplexity.splitlines() if l.startswith('| ')]
  assert [r for r in rows if r] == ['alibi'], rows  # The full report has rope's and a missing sinusoidal.


def test_export_makes_a_results_folder_that_regenerates_its_report(finished, tmp_path):
  """--export copies what a report reads of the finished runs (no checkpoints), adds
  to what is there, and ``--report`` on the folder alone rewrites the same report."""
  d, argv, _ = finished
  out = tmp_path / 'results'
  base = [a for a in argv if not a.startswith('--only')]
  assert runner.main(suite('extrapolation'), base + ['--only=alibi', f'--export={out}']) == 0
  assert sorted(os.listdir(out / 'alibi')) == ['config.json', 'metrics.jsonl', 'status.json']
  assert runner.main(suite('extrapolation'), base + ['--only=rope,sinusoidal',
                                                     f'--export={out}']) == 0
  assert json.load(open(out / 'suite.json'))['runs'] == ['alibi', 'rope']  # Suite order.
  md = (out / 'results.md').read_text()
  perplexity = md.split('### Bits per byte')[0]
  assert '| alibi |' in perplexity and '| rope |' in perplexity
  assert '| sinusoidal |' not in perplexity  # Not finished: not exported.
  (out / 'results.md').unlink()
  again = [f'--workdir={out}' if a.startswith('--workdir') else a for a in base]
  assert runner.main(suite('extrapolation'), again + ['--report']) == 0
  assert (out / 'results.md').read_text() == md


def test_load_for_analysis_works_on_a_suite_run(finished):
  from posjax.workdir import restore
  analysis = restore.load_for_analysis(os.path.join(finished[0], 'alibi'))
  assert analysis.step == 4 and analysis.config.model.posenc == 'alibi'


def test_rerun_skips_finished_runs(finished, monkeypatch, capsys):
  d, argv, _ = finished
  monkeypatch.setattr(launchers, 'execute', lambda *a: pytest.fail('a finished run ran'))
  assert runner.main(suite('extrapolation'), argv) == 0
  assert 'skipped (already finished: alibi, rope)' in capsys.readouterr().out


def test_rerun_resumes_unfinished_runs(finished, tmp_path, monkeypatch, capsys):
  """A run whose status is not 'finished', or that lacks its last checkpoint, reruns."""
  d, argv, _ = finished
  copy = str(tmp_path / 'suite')
  shutil.copytree(d, copy)
  status = os.path.join(copy, 'rope', 'status.json')
  json.dump({**json.load(open(status)), 'status': 'running'}, open(status, 'w'))
  shutil.rmtree(os.path.join(copy, 'alibi', 'checkpoints', '4'))
  ran = []
  monkeypatch.setattr(launchers, 'execute', lambda cmd, run_dir: ran.append(run_dir) or {
      'status': 'finished', 'reason': '', 'log': '', 'command': cmd, 'seconds': 0.0})
  argv = [a.replace(d, copy) for a in argv]
  assert runner.main(suite('extrapolation'), argv) == 0
  assert sorted(os.path.basename(r) for r in ran) == ['alibi', 'rope']
  assert 'summary: 2 finished, 0 failed, 0 skipped' in capsys.readouterr().out


def test_workdir_with_other_settings_is_refused(finished, capsys):
  d, argv, _ = finished
  other = [a for a in argv if a != '--config.seq_len=16'] + ['--config.seq_len=32']
  assert runner.main(suite('extrapolation'), other) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith('error: --workdir:')
  assert "seq_len" in err and '--scale=paper' not in err
  assert runner.main(suite('extrapolation'), argv + ['--scale=paper']) == 2
  assert "scale ('local' -> 'paper')" in capsys.readouterr().err


def test_evaluate_a_trained_run_under_another_scaling(finished, tmp_path):
  """posjax.evaluate: the rope run's params with a yarn scaling, no training."""
  from posjax import config_lib, evaluate
  from posjax.workdir import run_config
  source = os.path.join(finished[0], 'rope')
  config = run_config.load_config(source)
  config_lib.apply_overrides(config, {'model.posenc_args.scaling.type': 'yarn',
                                      'model.posenc_args.scaling.factor': '2',
                                      'model.posenc_args.scaling.original_max_position': '16'})
  out = evaluate.evaluate(config, source, str(tmp_path / 'yarn'))
  plain = json.loads(open(os.path.join(source, 'metrics.jsonl')).readlines()[-1])
  assert set(out) == {k for k in plain if k.startswith('eval/')}
  assert out['eval/loss@32'] != pytest.approx(plain['eval/loss@32'])  # The scaling acts.
  record = json.loads(open(tmp_path / 'yarn' / 'metrics.jsonl').read())
  assert record['step'] == 4 and record['eval/loss@16'] == out['eval/loss@16']


def test_failed_run_gives_its_error_line_and_log(tmp_path, corpus, capsys):
  d = str(tmp_path / 's')
  argv = ['x', f'--workdir={d}', '--only=alibi', f'--config.data.path={corpus}', *TINY,
          '--config.learning_rate=-1']
  assert runner.main(suite('extrapolation'), argv) == 1
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if l.startswith('  failed alibi:'))
  assert 'error: learning_rate: got -1' in line and os.path.join(d, 'alibi', 'log.txt') in line
  assert json.load(open(os.path.join(d, 'alibi', 'status.json')))['status'] == 'failed'


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
  ext = suite('extrapolation')
  for argv, field in ((['x'], '--workdir'),
                      (['x', f'--workdir={tmp_path}', '--config.nope=1'], '--config.nope'),
                      (['x', f'--workdir={tmp_path}', '--only=nope*'], '--only'),
                      (['x', f'--workdir={tmp_path}', '--launcher=ssh'], 'flags')):
    assert runner.main(ext, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {field}') and len(err.splitlines()) == 1
  assert not os.listdir(tmp_path)


def test_print_launcher_and_only_with_bases(tmp_path, capsys):
  """--only adds the runs a selected run starts from; print writes commands only."""
  argv = ['x', f'--workdir={tmp_path}', '--only=yarn-4x-*', '--launcher=print']
  assert runner.main(suite('rope_scaling'), argv) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [l.split('--workdir=')[1].split()[0] for l in lines] == [
      str(tmp_path / n) for n in ('rope', 'yarn-4x-zeroshot', 'yarn-4x-finetune')]
  assert lines[1].startswith('python -m posjax.evaluate ') and \
      f'--from_workdir={tmp_path / "rope"}' in lines[1]
  assert f'--config.init_from={tmp_path / "rope"}' in lines[2]
  assert '--config.model.posenc_args.scaling.type=yarn' in lines[2]


def test_requirements_stop_before_any_run(tmp_path, capsys):
  argv = ['x', f'--workdir={tmp_path / "s"}', '--scale=paper']
  assert runner.main(suite('length_generalization'), argv) == 2
  err = capsys.readouterr().err
  assert 'python -m posjax.data.build reverse_string --data_dir=DATA --size=full' in err
  assert not os.path.exists(tmp_path / 's')
  assert runner.main(suite('lra'), argv + [f'--config.data.data_dir={tmp_path}',
                                                '--only=text-*']) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 2 and 'aclImdb_v1.tar.gz' in lines[1]


def test_every_suite_plans_at_both_scales(tmp_path):
  for name in ('extrapolation', 'length_generalization', 'rope_scaling', 'lra'):
    s = suite(name)
    for scale in ('local', 'paper'):
      runs = s.runs(scale)
      jobs = runner.plan(runs, str(tmp_path), {})
      assert not [j.error for j in jobs if j.error], (name, scale)
      assert len({r.name for r in runs}) == len(runs)
  assert len(suite('extrapolation').runs('local')) >= 15
  ext = {r.name: r for r in suite('extrapolation').runs('local')}
  assert {'arch-irope', 'arch-gemma3', 'arch-command_a', 'arch-swan', 'rope-p0.75',
          'rope-ssmax'} <= set(ext)
  assert ext['arch-gemma3'].arg == 'arch=gemma3,window=16,runlocal'
  rs = {r.name for r in suite('rope_scaling').runs('local')}
  assert {'rope-p0.75', 'yarn_fractional-8x-finetune', 'yarn_mscale_all_dim-4x-zeroshot'} <= rs


def test_submitit_local_executor(tmp_path):
  """The slurm launcher's job array through submitit's local executor."""
  job = lambda name, code: runner.Job(
      runner.Run(name, 'configs/lm.py'), str(tmp_path / name),
      ['python', '-c', f'import sys; print("error: x: {name}"); sys.exit({code})'], total=1)
  jobs = [job('good', 0), job('bad', 3)]
  executor = launchers.slurm_executor(str(tmp_path / 'slurm'), 'local', timeout_min=5,
                                      slurm_partition='ignored-here')
  out = launchers.launch_slurm(jobs, launchers.Progress(jobs), executor)
  assert out['good']['status'] == 'finished'
  assert out['bad'] == {**out['bad'], 'status': 'failed', 'reason': 'exit code 3: error: x: bad'}
  assert open(tmp_path / 'good' / 'log.txt').read() == 'error: x: good\n'


def _record(name, status='finished', **final):
  from posjax.suites import report
  return report.RunRecord(name, status, '', None, final, {})


def test_length_generalization_report_separates_in_distribution(tmp_path):
  """OOD = mean over the test lengths only; a run below LEARNED in distribution is
  flagged and left out of the randomized gain; a missing run is shown as such."""
  lg = suite('length_generalization')
  acc = lambda ood, id_: {'eval/sequence_accuracy@30': ood[0],  # noqa: E731
                          'eval/sequence_accuracy@40': ood[1],
                          'eval/sequence_accuracy@100': ood[2],  # Past 2N (N = 29).
                          'eval/sequence_accuracy@in_distribution': id_}
  records = [_record('copy-rope', **acc((0.2, 0.4, 0.0), 1.0)),
             _record('copy-rope-randomized', **acc((0.6, 0.8, 0.4), 0.95)),
             _record('copy-alibi', **acc((0.0, 0.0, 0.0), 0.5)),
             _record('copy-alibi-randomized', 'missing')]
  md = lg.report(str(tmp_path), records)
  assert '| copy | 0.20 | 0.60 | 0.00 | missing |' in md
  assert '| copy-rope | 1.00 | 0.20 | 0.30 | yes |' in md  # N+1..2N: lengths 30 and 40.
  assert '| copy-alibi | 0.50 | 0.00 | 0.00 | NO |' in md
  assert '| copy-alibi-randomized | missing | missing | missing | missing |' in md
  assert '+40.0% over 1 pairs' in md
  assert (tmp_path / 'ood_accuracy.png').exists() and (tmp_path / 'results.csv').exists()


def test_rope_scaling_report_has_passkey_heat_maps_and_means(tmp_path):
  rs = suite('rope_scaling')
  keys = {'eval/sequence_accuracy@passkey_128_0': 1.0, 'eval/sequence_accuracy@passkey_128_50': 0.5,
          'eval/sequence_accuracy@passkey_256_0': 0.0, 'eval/sequence_accuracy@passkey_256_50': 0.25}
  # A passkey set also reports a perplexity: not an evaluation length.
  ppl = {'eval/perplexity@64': 3.0, 'eval/perplexity@128': 4.0,
         'eval/perplexity@passkey_128_0': 9.0}
  records = [_record('rope', **ppl, **keys), _record('yarn-4x-zeroshot', 'failed')]
  md = rs.report(str(tmp_path), records)
  assert '| rope | 0.75 | 0.12 |' in md and '| yarn-4x-zeroshot | failed | failed |' in md
  assert '| rope | 3.00 | 4.00 |' in md and 'passkey_128_0 |' not in md
  assert (tmp_path / 'perplexity_zeroshot.png').exists()
  assert rs._passkey(records[0]) == {(0.0, 128): 1.0, (0.5, 128): 0.5, (0.0, 256): 0.0,
                                     (0.5, 256): 0.25}
  assert os.listdir(tmp_path / 'passkey') == ['rope.png']  # A failed run has no map.


# ----------------------------------------------------------------------------
# Reliability III: one runner per suite, Ctrl-C / SIGTERM, damaged suite files,
# the checkout's own posjax, --help.

SCRIPTS = sorted(f for f in os.listdir(os.path.join(REPO, 'experiments')) if f.endswith('.py'))
# A run that trains until it is stopped (and saves nothing before).
LONG = [a for a in TINY if not a.startswith(('--config.num_train_steps', '--config.eval_every',
                                             '--config.checkpoint_every'))] + [
    '--config.num_train_steps=1000000', '--config.eval_every_steps=1000000',
    '--config.checkpoint_every_steps=1000000']


def _runner(d, corpus, *flags):
  """A runner subprocess of the extrapolation suite on ``d`` (three long runs), in
  a process group of its own (``_kill`` ends it and its runs, whatever happened)."""
  cmd = [sys.executable, os.path.join(REPO, 'experiments', 'extrapolation.py'), f'--workdir={d}',
         '--only=alibi,rope,t5', '--parallel=1', f'--config.data.path={corpus}', *LONG, *flags]
  return subprocess.Popen(cmd, env=dict(os.environ, JAX_PLATFORMS='cpu'), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _kill(proc):
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass


def _wait_for(condition, proc, what, seconds=180):
  deadline = time.monotonic() + seconds
  while not condition():
    assert proc.poll() is None, f'the runner ended before {what}: {proc.communicate()}'
    assert time.monotonic() < deadline, f'no {what} after {seconds} s'
    time.sleep(0.05)


def _snapshot(d):
  """What a second runner could write: the suite's files and the runs' status.json."""
  out = {'entries': sorted(os.listdir(d))}
  for name in out['entries']:
    if (d / name).is_file():
      out[name] = (d / name).read_bytes()
    elif (d / name / 'status.json').exists():
      out[f'{name}/status.json'] = (d / name / 'status.json').read_bytes()
  return out


def test_a_second_runner_on_a_busy_suite_changes_nothing_and_sigterm_stops_the_first(
    tmp_path, corpus):
  """Two runners on one --workdir: the second is one line naming the first, exit 2,
  and writes nothing (the live run's log, which holds an earlier attempt, is not
  truncated; no status is touched); SIGTERM then stops the first: exit 130."""
  d = tmp_path / 'suite'
  log = d / 'alibi' / 'log.txt'
  log.parent.mkdir(parents=True)
  log.write_text('an earlier attempt\n')
  first = _runner(d, corpus)
  try:
    _wait_for(lambda: (d / 'alibi' / 'status.json').exists(), first, 'the first run')
    before = _snapshot(d)
    assert json.loads(before['alibi/status.json'])['status'] == 'running'
    for extra in ([], ['--launcher=print']):
      second = _runner(d, corpus, *extra)
      try:
        out, err = second.communicate(timeout=60)
      finally:
        _kill(second)
      assert second.returncode == 2, (out, err)
      assert err.count('\n') == 1 and not out, (out, err)
      assert err.startswith(f'error: --workdir: {d} is in use by process {first.pid} on '), err
      assert 'one runner per suite workdir' in err
    assert _snapshot(d) == before
    assert log.read_text().startswith('an earlier attempt\n\n=== ')  # Appended to.
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=60)
  finally:
    _kill(first)
  assert first.returncode == 130, (out, err)
  assert 'summary: 0 finished, 0 failed, 1 interrupted, 2 not started' in out, out
  assert 'stopped by SIGTERM: rerun the same command' in out and 'Traceback' not in out + err
  assert json.load(open(d / 'alibi' / 'status.json'))['status'] == 'interrupted'
  assert log.read_text().startswith('an earlier attempt\n')


def test_ctrl_c_stops_the_live_run_starts_no_queued_one_and_reports(tmp_path, corpus):
  """SIGINT on a runner with two runs queued: the live run saves a checkpoint and
  is 'interrupted', the queued ones never start; summary, report, exit 130, no
  traceback. The rerun appends to the run's log."""
  d = tmp_path / 'suite'
  runner_proc = _runner(d, corpus)
  try:
    metrics = d / 'alibi' / 'metrics.jsonl'
    _wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, runner_proc,
              'a training step')
    runner_proc.send_signal(signal.SIGINT)
    out, err = runner_proc.communicate(timeout=60)
  finally:
    _kill(runner_proc)
  assert runner_proc.returncode == 130, (out, err)
  assert 'Traceback' not in out + err, err
  lines = out.splitlines()
  assert 'summary: 0 finished, 0 failed, 1 interrupted, 2 not started, 0 skipped' in out, out
  assert '  not started: rope, t5' in lines
  assert lines[-2].startswith('stopped by Ctrl-C: rerun the same command') and \
      lines[-1] == f'report: {d / "results.md"}'
  status = json.load(open(d / 'alibi' / 'status.json'))
  assert status['status'] == 'interrupted'
  step = int(status['reason'].rsplit(' ', 1)[1])  # '... checkpoint saved at step N'
  assert (d / 'alibi' / 'checkpoints' / str(step)).is_dir()
  assert not (d / 'rope').exists() and not (d / 't5').exists()
  assert '| alibi | interrupted |' in open(d / 'results.md').read()


def test_a_rerun_appends_to_the_log_and_reports_its_own_error(tmp_path):
  d = str(tmp_path / 'run')
  first = launchers.execute(['python', '-c', 'print("error: x: first")'], d)
  second = launchers.execute(['python', '-c', 'import sys; print("second"); sys.exit(3)'], d)
  assert first['status'] == 'finished'
  assert second['status'] == 'failed' and second['reason'] == 'exit code 3: second'
  lines = open(os.path.join(d, 'log.txt')).read().splitlines()
  assert lines[0] == 'error: x: first' and lines[-1] == 'second'
  assert 'run again by the suite runner' in lines[-2]


class _FakeSlurmJob:
  def __init__(self, executor, index, run_dir):
    self.executor, self.job_id, self.run_dir = executor, f'42_{index}', run_dir
    self.cancelled, self.polls = False, 0
    self.paths = types.SimpleNamespace(stderr=os.path.join(run_dir, 'slurm.err'))

  def done(self):  # The first poll: the signal, as if the user pressed Ctrl-C.
    self.polls += 1
    if not self.executor.signalled:
      self.executor.signalled = True
      os.kill(os.getpid(), self.executor.signum)
    return self.polls > 25  # Without a stop: both finish after 25 polls.

  def result(self):
    return {'status': 'finished', 'reason': '', 'log': '', 'command': [], 'seconds': 0.0}

  def cancel(self, check=True):
    self.cancelled = True


class _FakeSlurmExecutor:
  """submitit's executor for ``launch_slurm``: job 42_0 has started on a node (its
  status.json says running), 42_1 is pending."""
  cluster = 'fake'

  def __init__(self, signum):
    self.signum, self.signalled, self.jobs, self.pythonpath = signum, False, [], None

  def batch(self):
    return contextlib.nullcontext()

  def submit(self, fn, cmd, run_dir):
    self.pythonpath = os.environ.get('PYTHONPATH', '')
    job = _FakeSlurmJob(self, len(self.jobs), run_dir)
    if not self.jobs:
      os.makedirs(run_dir)
      launchers.write_json(os.path.join(run_dir, 'status.json'), {'status': 'running'})
    self.jobs.append(job)
    return job


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_cancels_the_slurm_array(tmp_path, corpus, monkeypatch, capsys, signum):
  fake = _FakeSlurmExecutor(signum)
  monkeypatch.setattr(launchers, 'slurm_executor', lambda *a, **k: fake)
  ignore = lambda *a: None  # noqa: E731  (Without the runner's handlers: not pytest's end.)
  previous = {s: signal.signal(s, ignore) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    code = runner.main(suite('extrapolation'), [
        'x', f'--workdir={tmp_path}', '--only=alibi,rope', '--launcher=slurm',
        f'--config.data.path={corpus}', *TINY])
    restored = [signal.getsignal(s) is ignore for s in previous]
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  out = capsys.readouterr().out
  assert code == 130, out
  assert [j.cancelled for j in fake.jobs] == [True, True]
  assert fake.pythonpath.split(os.pathsep)[0] == REPO  # The jobs run this checkout.
  assert 'summary: 0 finished, 0 failed, 1 interrupted, 1 not started' in out
  assert json.load(open(tmp_path / 'alibi' / 'status.json'))['status'] == 'interrupted'
  assert not (tmp_path / 'rope').exists() and (tmp_path / 'results.md').exists()
  assert restored == [True, True]  # The runner's handlers are gone after it.


@pytest.mark.parametrize('text', ['{"suite": "extrapo', '', '[1, 2]', '{"suite": "extrapolation"}'])
def test_a_damaged_suite_json_is_one_line_and_changes_nothing(tmp_path, capsys, text):
  """Never read as absent: the other-settings guard holds, for every command."""
  path = tmp_path / 'suite.json'
  path.write_text(text)
  base = ['x', f'--workdir={tmp_path}', '--only=alibi']
  for extra in ([], ['--config.learning_rate=0.5'], ['--report'], ['--dry_run'],
                ['--launcher=print']):
    assert runner.main(suite('extrapolation'), base + extra) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count('\n') == 1 and not captured.out, err
    assert err.startswith(f'error: --workdir: {path} is damaged (')
    assert 'allowed: restore it' in err and 'or delete it' in err
  assert os.listdir(tmp_path) == ['suite.json'] and path.read_text() == text


def test_a_damaged_run_status_is_a_warning_and_the_run_reruns(finished, tmp_path, monkeypatch,
                                                              capsys):
  d, argv, _ = finished
  copy = str(tmp_path / 'suite')
  shutil.copytree(d, copy)
  status = os.path.join(copy, 'rope', 'status.json')
  open(status, 'w').write('{"status": "fini')
  ran = []

  def execute(cmd, run_dir):  # As the real one: the status is rewritten.
    ran.append(run_dir)
    out = {'status': 'finished', 'reason': '', 'log': '', 'command': cmd, 'seconds': 0.0}
    launchers.write_json(os.path.join(run_dir, 'status.json'), out)
    return out
  monkeypatch.setattr(launchers, 'execute', execute)
  assert runner.main(suite('extrapolation'), [a.replace(d, copy) for a in argv]) == 0
  assert [os.path.basename(r) for r in ran] == ['rope']
  captured = capsys.readouterr()
  assert 'skipped (already finished: alibi)' in captured.out
  assert captured.err.startswith(f'warning: {status} is damaged (not JSON: ')
  assert captured.err.count('\n') == 1 and 'the suite reruns it' in captured.err


def test_a_suite_script_runs_the_posjax_of_its_own_checkout(tmp_path, capsys):
  """A second clone's script: the runner and the run it launches import the clone's
  posjax (here marked, with a stand-in posjax.main), not the installed one; where
  it cannot (imported into a process that has a posjax), one line says so."""
  clone = tmp_path / 'clone'
  shutil.copytree(os.path.join(REPO, 'posjax'), clone / 'posjax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  shutil.copytree(os.path.join(REPO, 'configs'), clone / 'configs')
  (clone / 'experiments').mkdir()
  shutil.copy(os.path.join(REPO, 'experiments', 'extrapolation.py'), clone / 'experiments')
  with open(clone / 'posjax' / '__init__.py', 'a') as f:
    f.write('import sys as _sys\n_sys.stderr.write(f"posjax imported from {__file__}\\n")\n')
  (clone / 'posjax' / 'main.py').write_text(
      'import os, posjax\nprint(f"run: {posjax.__file__} {os.getcwd()} '
      '{os.environ[\'PYTHONPATH\']}")\n')
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  d = tmp_path / 'suite'
  # (The stand-in ignores the flags; any other posjax stops at once on the learning rate.)
  proc = subprocess.run([sys.executable, str(clone / 'experiments' / 'extrapolation.py'),
                         f'--workdir={d}', '--only=alibi', '--config.learning_rate=-1'],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  init = clone / 'posjax' / '__init__.py'
  assert proc.stderr.splitlines()[0] == f'posjax imported from {init}', proc.stderr
  assert proc.returncode == 0, proc
  log = open(d / 'alibi' / 'log.txt').read()
  assert f'run: {init} {clone} {clone}' in log, log
  spec = importlib.util.spec_from_file_location('clone_suite', clone / 'experiments' /
                                                'extrapolation.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert runner.main(module, ['x', f'--workdir={tmp_path / "s2"}', '--dry_run']) == 0
  assert capsys.readouterr().err.splitlines()[0] == (
      f'note: {module.__file__} runs the posjax of {REPO}, not the one of its own checkout '
      f'{clone} (run the script itself to use its own)')


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_script_has_help(script):
  proc = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', script), '--help'],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr
  own = {'attention_benchmark.py': '--repeats', 'compile_benchmark.py': '--layers'}
  flag = '--workdir' if 'run_suite' in open(os.path.join(REPO, 'experiments', script)).read() \
      else own.get(script, '--parts')
  assert f'{flag}:' in proc.stdout and 'error' not in proc.stderr, proc


def test_report_and_dry_run_beside_a_live_runner(finished, tmp_path, capsys):
  """Read-only commands need no lock: they say who holds it and write no state;
  anything that writes is refused."""
  from posjax.workdir import lock as workdir_lock
  d, argv, _ = finished
  copy = tmp_path / 'suite'
  shutil.copytree(d, copy, ignore=shutil.ignore_patterns('results.md'))
  argv = [a.replace(d, str(copy)) for a in argv]
  held = workdir_lock.Lock(str(copy)).acquire()  # As a live runner holds it.
  try:
    statuses = {n: (copy / n / 'status.json').read_bytes() for n in ('alibi', 'rope')}
    assert runner.main(suite('extrapolation'), argv + ['--dry_run']) == 0
    out, err = capsys.readouterr()
    assert out == '# skip alibi (finished)\n# skip rope (finished)\n'
    assert err.startswith(f'note: {copy} is in use by process {os.getpid()} on ')
    assert runner.main(suite('extrapolation'), argv + ['--report']) == 0
    assert 'the report shows its runs as they are now' in capsys.readouterr().err
    assert (copy / 'results.md').exists()
    assert runner.main(suite('extrapolation'), argv) == 2
    assert 'one runner per suite workdir' in capsys.readouterr().err
    assert statuses == {n: (copy / n / 'status.json').read_bytes() for n in statuses}
  finally:
    held.release()
