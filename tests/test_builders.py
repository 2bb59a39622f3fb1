"""Generated datasets build as array_record and read back with tfds.data_source."""
import collections
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from posjax.data import build, builders, listops, prepared, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_listops_reads_back_with_exact_targets(data_dir):
  src = tfds.data_source('listops/tiny', data_dir=data_dir)
  assert [len(src[s]) for s in ('train', 'validation', 'test')] == list(listops.SIZES['tiny'])
  for i in range(len(src['validation'])):
    ex = src['validation'][i]
    text = ex['inputs'].decode() if isinstance(ex['inputs'], bytes) else ex['inputs']
    assert listops.evaluate(text) == ex['targets']


def test_pathfinder_reads_back_balanced(data_dir):
  src = tfds.data_source('pathfinder32/tiny', data_dir=data_dir)
  labels = [src['train'][i]['label'] for i in range(len(src['train']))]
  assert src['train'][0]['image'].shape == (32, 32, 1)
  assert sum(labels) * 2 == len(labels)


def test_synthetic_splits_follow_the_length_protocol(data_dir):
  src = tfds.data_source('reverse_string/tiny', data_dir=data_dir)
  n_max = builders.SYNTHETIC_SIZES['tiny'][0]
  train = {int(src['train'][i]['length']) for i in range(len(src['train']))}
  test = {int(src['test'][i]['length']) for i in range(len(src['test']))}
  assert train == set(range(1, n_max + 1))
  assert min(test) == n_max + 1 and max(test) == 10 * n_max
  for split in ('train', 'test'):
    ex = src[split][3]
    np.testing.assert_array_equal(synthetic.solve('reverse_string', ex['inputs']), ex['targets'])


def _corpus(root, names):
  root.mkdir()
  for n in names:
    (root / f'{n}.txt').write_text(f'document {n}\n')
  return str(root)


def test_same_seed_same_data_other_seed_rebuilds_and_check_matches_refuses(tmp_path, data_dir):
  d = str(tmp_path)
  counted = collections.Counter()
  builder = builders.make('reverse_string', data_dir=d, size='tiny', seed=0)
  assert prepared.prepare(builder, progress=collections.namedtuple('Bar', 'update')(
      lambda n: counted.update(examples=n))) is None
  assert counted['examples'] == sum(s.num_examples for s in builder.info.splits.values())
  a = tfds.data_source('reverse_string/tiny', data_dir=data_dir)['train']
  b = tfds.data_source('reverse_string/tiny', data_dir=d)['train']
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]['inputs'], b[i]['inputs'])
  builders.check_matches('reverse_string', d, 'tiny', seed=0)
  assert builders.build('reverse_string', data_dir=d, size='tiny', seed=7) == 'reverse_string/tiny'
  c = tfds.data_source('reverse_string/tiny', data_dir=d)['train']
  assert any(not np.array_equal(a[i]['inputs'], c[i]['inputs']) for i in range(len(a)))
  builders.check_matches('reverse_string', d, 'tiny', seed=7)
  with pytest.raises(ValueError) as e:
    builders.check_matches('reverse_string', d, 'tiny', seed=0)
  msg = str(e.value)
  assert msg.startswith('data.seed: reverse_string/tiny') and 'seed 7 -> 0' in msg, msg
  assert '--seed=0' in msg and '\n' not in msg


def test_rebuilding_local_text_from_other_files_says_so(tmp_path, capsys):
  a, b = _corpus(tmp_path / 'a', ['x', 'y']), _corpus(tmp_path / 'b', ['p', 'q', 'r'])
  d = str(tmp_path / 'tfds')
  def cli(path):
    assert build.main(['build', 'local_text', f'--data_dir={d}', f'--path={path}']) == 0
    src = tfds.data_source('local_text/tiny', data_dir=d)
    paths = {src[s][i]['path'] for s in src for i in range(len(src[s]))}
    return capsys.readouterr().out.splitlines(), paths
  out, paths = cli(a)
  assert out[0].startswith('local_text/tiny train: ') and paths == {b'x.txt', b'y.txt'}
  out, paths = cli(b)
  assert out[0].startswith(f"local_text/tiny: rebuilt (path '{a}: 2 files") and paths == {
      b'p.txt', b'q.txt', b'r.txt'}
  builders.check_matches('local_text', d, 'tiny', path=b + '/')
  with pytest.raises(ValueError, match=r'^data\.path: local_text/tiny .* allowed: '):
    builders.check_matches('local_text', d, 'tiny', path=a)
  out, _ = cli(b)
  assert out[0] == 'local_text/tiny: reused (built with these inputs)'


def test_data_source_without_a_size_opens_the_one_built_or_says_which(tmp_path, data_dir):
  assert len(tfds.data_source('listops', data_dir=data_dir)['test']) == listops.SIZES['tiny'][2]
  empty = str(tmp_path / 'empty')
  with pytest.raises(ValueError) as e:
    tfds.data_source('listops', data_dir=empty)
  assert ("listops config: got none, and none is built in" in str(e.value)
          and f'python -m posjax.data.build listops --data_dir={empty} --size=SIZE' in str(e.value))
  assert not os.path.exists(empty)  # No build started.
  two = tmp_path / 'two'
  for size in ('tiny', 'small'):
    shutil.copytree(os.path.join(data_dir, 'reverse_string', 'tiny'), two / 'reverse_string' / size)
  with pytest.raises(ValueError) as e:
    tfds.data_source('reverse_string', data_dir=str(two))
  assert str(e.value).endswith("holds 2; allowed: 'reverse_string/tiny', 'reverse_string/small'")


@pytest.mark.parametrize('args, error', [
    (['nonesuch'], 'error: data.name: unknown dataset'),
    (['listops', '--bogus=1'], "error: flags: Unknown command line flag 'bogus'"),
    (['listops', '--seed=x'], 'error: flags: flag --seed=x'),
    (['listops', '--data_dir=FILE/sub'], "error: data_dir: got 'FILE/sub' (Not a directory)"),
    (['listops', '--size=huge'], "error: size: got 'huge'")])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, error):
  (tmp_path / 'FILE').write_text('')
  args = [a.replace('FILE', str(tmp_path / 'FILE')) for a in args]
  if not any(a.startswith('--data_dir') for a in args):
    args.append(f'--data_dir={tmp_path}')
  assert build.main(['build', *args]) == 2
  out, err = capsys.readouterr()
  assert err.startswith(error.replace('FILE', str(tmp_path / 'FILE'))), err
  assert err.count('\n') == 1 and not out


def test_cli_prints_a_line_per_split_and_nothing_of_tfds(tmp_path, corpus):
  ok = subprocess.run([sys.executable, '-m', 'posjax.data.build', 'local_text',
                       f'--data_dir={tmp_path}', f'--path={corpus}'],
                      capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': ROOT})
  assert ok.returncode == 0, ok.stderr[-2000:]
  # stderr: at most our progress bar (shown after half a second), nothing of TFDS's.
  assert all(not p.strip() or p.startswith('local_text/tiny: ') for p in ok.stderr.split('\r'))
  src = tfds.data_source('local_text/tiny', data_dir=str(tmp_path))
  assert ok.stdout.splitlines() == [
      f'local_text/tiny train: {len(src["train"])} examples',
      f'local_text/tiny validation: {len(src["validation"])} examples',
      f"built: {tmp_path}/local_text/tiny/1.0.0  (tfds.data_source('local_text/tiny', "
      f"data_dir='{tmp_path}'))"]
