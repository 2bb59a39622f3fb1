"""Reports from fabricated suite workdirs (issue 11): statuses, tables with the
missing / failed runs shown, markdown and CSV exactly, and PNG plots."""
import dataclasses
import json
import subprocess
import sys

import pytest

from posjax.analysis import charts
from posjax.suites import report
from posjax.workdir import lock as workdir_lock

PNG = b'\x89PNG\r\n\x1a\n'
RUNS = ['rope', 'alibi', 'nope', 't5', 'fire']


def _train(step, loss):
  return {'step': step, 'train/loss': loss, 'train/learning_rate': 1e-3}


def _eval(step, ppl128, ppl256):
  return {'step': step, 'eval/perplexity@256': ppl256, 'eval/perplexity@128': ppl128}


def _write_run(path, rows, status=None, partial_line='', steps=200):
  path.mkdir()
  (path / 'config.json').write_text(json.dumps(
      {'num_train_steps': steps, 'model': {'posenc': path.name}}))
  if rows is not None:
    (path / 'metrics.jsonl').write_text(
        ''.join(json.dumps(r) + '\n' for r in rows) + partial_line)
  if status is not None:
    (path / 'status.json').write_text(status if isinstance(status, str)
                                      else json.dumps(status))


@pytest.fixture
def suite(tmp_path):
  """rope finished, alibi killed at step 150 (a partial last line), nope failed
  (status.json), t5 running (status.json), fire never started (no directory)."""
  _write_run(tmp_path / 'rope', [_train(100, 2.0), _eval(100, 9.0, 12.0),
                                 _train(200, 1.5), _eval(200, 5.1, 7.25)])
  _write_run(tmp_path / 'alibi', [_train(100, 2.5), _eval(100, 8.0, 8.5)],
             partial_line='{"step": 150, "train/lo')
  _write_run(tmp_path / 'nope', [_train(100, 3.0)],
             status={'status': 'failed', 'reason': 'error: out of memory', 'log': 'x',
                     'command': [], 'seconds': 1.0})
  _write_run(tmp_path / 't5', [], status={'status': 'running', 'reason': ''})
  (tmp_path / 'suite.json').write_text(json.dumps(
      {'suite': 'test', 'scale': 'local', 'overrides': {}, 'runs': RUNS}))
  lock = workdir_lock.Lock(str(tmp_path / 't5')).acquire()  # t5's process is alive.
  yield tmp_path
  lock.release()


def test_a_running_run_whose_lock_nobody_holds_was_interrupted(tmp_path):
  _write_run(tmp_path / 'rope', [_train(100, 2.0)],
             status={'status': 'running', 'reason': ''})
  (tmp_path / 'rope' / workdir_lock.LOCK_FILE).write_text('process 1 on gone since then')
  record = report.load_run(str(tmp_path / 'rope'))
  assert (record.status, record.reason) == ('interrupted', 'stopped at step 100 of 200')


def _ppl(r):
  return report.metric_by_suffix(r, 'eval/perplexity@')


def test_load_suite_gives_every_run_its_status_and_metrics(suite):
  records = report.load_suite(str(suite))
  assert [(r.name, r.status, r.reason) for r in records] == [
      ('rope', 'finished', ''),
      ('alibi', 'interrupted', 'stopped at step 100 of 200'),
      ('nope', 'failed', 'error: out of memory'),
      ('t5', 'running', ''),
      ('fire', 'missing', f'no directory {suite / "fire"}')]
  rope, alibi, _, _, fire = records
  assert rope.final == {'train/loss': 1.5, 'train/learning_rate': 1e-3,
                        'eval/perplexity@128': 5.1, 'eval/perplexity@256': 7.25}
  assert rope.history['train/loss'] == [(100, 2.0), (200, 1.5)]
  assert rope.history['eval/perplexity@128'] == [(100, 9.0), (200, 5.1)]
  assert rope.config.model.posenc == 'rope' and rope.step == 200
  assert rope.path == str(suite / 'rope')
  assert alibi.final['train/loss'] == 2.5 and alibi.step == 100
  assert (fire.config, fire.final, fire.history, fire.step) == (None, {}, {}, None)


def test_names_default_to_the_subdirectories_without_suite_json(suite):
  (suite / 'suite.json').unlink()
  assert [r.name for r in report.load_suite(str(suite))] == ['alibi', 'nope', 'rope', 't5']
  assert [r.status for r in report.load_suite(str(suite), ['rope', 'x'])] == [
      'finished', 'missing']


@pytest.mark.parametrize('rows,status,expected', [
    ([_train(200, 1.0)], None, 'interrupted'),  # The last step was never evaluated.
    ([_train(200, 1.0), _eval(200, 1.0, 1.0)], '{"status": "fin', 'finished'),  # Bad json.
    ([_train(200, 1.0), _eval(200, 1.0, 1.0)], {'status': 'failed'}, 'failed'),
    (None, None, 'missing'),  # A directory without metrics.jsonl.
])
def test_status_without_a_runner_or_with_a_damaged_status_file(tmp_path, rows, status,
                                                              expected):
  _write_run(tmp_path / 'run', rows, status=status)
  assert report.load_run(str(tmp_path / 'run')).status == expected


def test_metric_by_suffix_keys_lengths_as_ints_in_numeric_order():
  record = report.RunRecord(
      name='r', status='finished', reason='', config=None, history={},
      final={'eval/accuracy@validation': 0.5, 'eval/accuracy@1024': 0.25,
             'eval/accuracy@128': 0.75, 'eval/loss@128': 2.0, 'eval/accuracy@': 1.0})
  got = report.metric_by_suffix(record, 'eval/accuracy@')
  assert list(got.items()) == [(128, 0.75), (1024, 0.25), ('validation', 0.5)]


def test_pivot_shows_each_unfinished_run_by_its_status(suite):
  table = report.pivot(report.load_suite(str(suite)), row=lambda r: r.name, value=_ppl)
  assert report.to_markdown(table, title='Perplexity') == (
      '### Perplexity\n'
      '\n'
      '|  | 128 | 256 |\n'
      '|---|---:|---:|\n'
      '| rope | 5.10 | 7.25 |\n'
      '| alibi | interrupted | interrupted |\n'
      '| nope | failed | failed |\n'
      '| t5 | running | running |\n'
      '| fire | missing | missing |\n')
  assert report.to_csv_rows(table)[:3] == [
      ['', '128', '256'], ['rope', '5.1', '7.25'], ['alibi', 'interrupted', 'interrupted']]


def test_a_metric_a_finished_run_lacks_is_not_available(suite):
  rope = report.load_run(str(suite / 'rope'))
  other = dataclasses.replace(rope, name='other', final={'eval/perplexity@512': 3.0})
  table = report.pivot([rope, other], row=lambda r: r.name, value=_ppl)
  assert report.to_csv_rows(table) == [
      ['', '128', '256', '512'], ['rope', '5.1', '7.25', 'n/a'], ['other', 'n/a', 'n/a', '3.0']]


def test_pivot_with_a_column_function(suite):
  records = report.load_suite(str(suite))
  table = report.pivot(records, row=lambda r: 'ppl@256', col=lambda r: r.name,
                       value=lambda r: r.final.get('eval/perplexity@256'))
  assert report.to_markdown(table, fmt='{:.1f}') == (
      '|  | rope | alibi | nope | t5 | fire |\n'
      '|---|---:|---|---|---|---|\n'
      '| ppl@256 | 7.2 | interrupted | failed | running | missing |\n')
  absent = report.pivot(records, row=lambda r: r.name, col=lambda r: 'x',
                        value=lambda r: r.final.get('eval/perplexity@4096'))
  assert absent.cells['rope', 'x'] == 'n/a' and absent.cells['fire', 'x'] == 'missing'


def test_pivot_refuses_two_runs_in_one_cell(suite):
  with pytest.raises(ValueError, match=r'^pivot: got runs rope and alibi for the cell '
                                       r'\(all, 128\); allowed: one run per cell'):
    report.pivot(report.load_suite(str(suite)), row=lambda r: 'all', value=_ppl)


def test_status_table_and_the_default_value(suite):
  records = report.load_suite(str(suite))
  assert report.to_markdown(report.status_table(records)) == (
      '|  | status | step | reason |\n'
      '|---|---|---|---|\n'
      '| rope | finished | 200/200 |  |\n'
      '| alibi | interrupted | 100/200 | stopped at step 100 of 200 |\n'
      '| nope | failed | 100/200 | error: out of memory |\n'
      '| t5 | running | /200 |  |\n'
      f'| fire | missing |  | no directory {suite / "fire"} |\n')
  table = report.pivot(records[:1] + records[-1:], row=lambda r: r.name)
  assert table.col_labels == ['perplexity@256', 'perplexity@128']
  assert table.cells['fire', 'perplexity@128'] == 'missing'


def test_write_csv_is_one_long_table(suite, tmp_path):
  records = report.load_suite(str(suite))
  path = tmp_path / 'results.csv'
  report.write_csv(str(path), {
      'ppl': report.pivot(records[:2], row=lambda r: r.name, value=_ppl),
      'status': report.pivot(records[-1:], row=lambda r: r.name, col=lambda r: 'run',
                             value=lambda r: 1.0)})
  assert path.read_text().splitlines() == [
      'table,row,column,value',
      'ppl,rope,128,5.1', 'ppl,rope,256,7.25',
      'ppl,alibi,128,interrupted', 'ppl,alibi,256,interrupted',
      'status,fire,run,missing']


def test_plot_lines_draws_a_labelled_line_per_run_missing_included(suite, tmp_path):
  records = report.load_suite(str(suite))
  path = tmp_path / 'plots' / 'ppl.png'
  fig = charts.plot_lines(report.series(records, _ppl), xlabel='length',
                          ylabel='perplexity', title='t', logx=True, path=str(path),
                          marks={'rope': 's--'})
  assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
  lines = fig.axes[0].get_lines()
  assert [ln.get_label() for ln in lines] == [
      'rope', 'alibi (interrupted)', 'nope (failed)', 't5 (running)', 'fire (missing)']
  assert list(lines[0].get_xdata()) == [128, 256] and lines[0].get_marker() == 's'
  assert list(lines[0].get_ydata()) == [5.1, 7.25] and len(lines[-1].get_xdata()) == 0


def test_plot_heatmap_writes_numbers_and_statuses(suite, tmp_path):
  table = report.pivot(report.load_suite(str(suite)), row=lambda r: r.name, value=_ppl)
  path = tmp_path / 'heat.png'
  fig = charts.plot_heatmap(table, title='t', path=str(path), fmt='{:.1f}')
  assert path.read_bytes()[:8] == PNG
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert texts == ['5.1', '7.2', 'interrupted', 'interrupted', 'failed', 'failed',
                   'running', 'running', 'missing', 'missing']


def test_import_is_light():
  code = ('import sys, posjax.suites.report; '
          'print(sorted(m for m in ("jax", "flax", "optax", "matplotlib") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == '[]'
