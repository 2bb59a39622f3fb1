"""The suite runner (posjax.suites.runner / posjax.suites.launchers), posjax.evaluate and the
suites in experiments/: skip / resume / refuse, failures, submitit's local
executor, and one end-to-end suite at a tiny scale (two encodings, a few steps)."""
import importlib.util
import json
import os
import shutil

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
                          'eval/sequence_accuracy@in_distribution': id_}
  records = [_record('copy-rope', **acc((0.2, 0.4), 1.0)),
             _record('copy-rope-randomized', **acc((0.6, 0.8), 0.95)),
             _record('copy-alibi', **acc((0.0, 0.0), 0.5)),
             _record('copy-alibi-randomized', 'missing')]
  md = lg.report(str(tmp_path), records)
  assert '| copy | 0.30 | 0.70 | 0.00 | missing |' in md
  assert '| copy-alibi | 0.50 | 0.00 | NO |' in md
  assert '| copy-alibi-randomized | missing | missing | missing |' in md
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
