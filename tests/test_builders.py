"""Generated datasets build as array_record and read back with tfds.data_source."""
import os
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

from posjax.data import builders, listops, synthetic

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


def test_same_seed_same_data(tmp_path, data_dir):
  builders.build('reverse_string', data_dir=str(tmp_path), size='tiny', seed=0)
  a = tfds.data_source('reverse_string/tiny', data_dir=data_dir)['train']
  b = tfds.data_source('reverse_string/tiny', data_dir=str(tmp_path))['train']
  for i in range(len(a)):
    np.testing.assert_array_equal(a[i]['inputs'], b[i]['inputs'])


def test_cli_builds_and_rejects_unknown_names(tmp_path):
  env = {**os.environ, 'PYTHONPATH': ROOT}
  ok = subprocess.run([sys.executable, '-m', 'posjax.data.build', 'parity_check',
                       f'--data_dir={tmp_path}'], capture_output=True, text=True, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "tfds.data_source('parity_check/tiny'" in ok.stdout
  bad = subprocess.run([sys.executable, '-m', 'posjax.data.build', 'nonesuch',
                        f'--data_dir={tmp_path}'], capture_output=True, text=True, env=env)
  assert bad.returncode == 2
  assert bad.stderr.strip().startswith('error: data.name: unknown dataset') and '\n' not in bad.stderr.strip()
