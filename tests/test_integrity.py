"""A bad step is never saved; damaged, non-finite or foreign checkpoints are
caught (issue 10 items 1, 3, 5, 6, 9): ``posjax.workdir.integrity`` and its use by the
trainer and ``posjax.workdir.checkpoints``."""
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posjax import tasks
from posjax.data import builders
from posjax.training import loop, steps, validation
from posjax.workdir import checkpoints, integrity, restore, run_config

from test_train import tiny_config


def _steps(workdir):
  d = checkpoints.checkpoint_dir(workdir)
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _patch_step(monkeypatch, at_call, action):
  real = steps.Trainer.train_step
  calls = []
  def step(self, state, batch):
    calls.append(1)
    state, metrics = real(self, state, batch)
    if len(calls) == at_call:
      state, metrics = action(state, metrics)
    return state, metrics
  monkeypatch.setattr(steps.Trainer, 'train_step', step)


def _poison(state, metrics):
  """NaN parameters and gradients with a finite loss (as a learning rate of 1e2 gives)."""
  params = jax.tree.map(lambda x: x * jnp.nan, state['params'])
  return dict(state, params=params), {**metrics, 'grad_norm': metrics['grad_norm'] * jnp.nan,
                                      'param_norm': metrics['param_norm'] * jnp.nan}


def test_a_non_finite_step_is_never_saved(corpus, tmp_path, monkeypatch):
  cfg = tiny_config(corpus, num_train_steps=4, checkpoint_every_steps=1)
  _patch_step(monkeypatch, 3, _poison)
  with pytest.raises(FloatingPointError, match=r'^step 3: the gradient norm is nan'):
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert _steps(str(tmp_path)) == [1, 2]


@pytest.fixture(scope='module')
def finished(corpus, tmp_path_factory):
  """A finished 3-step run with a checkpoint at every step."""
  cfg = tiny_config(corpus, num_train_steps=3, checkpoint_every_steps=1, eval_every_steps=3)
  workdir = str(tmp_path_factory.mktemp('finished'))
  loop.train_and_evaluate(cfg, workdir)
  return cfg, workdir


def _copy(finished, tmp_path):
  cfg, workdir = finished
  dst = str(tmp_path / 'run')
  shutil.copytree(workdir, dst)
  return cfg, dst


def _param_files(step_dir):
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'params'))
                for f in fs if os.path.basename(d) == 'd')


def test_bytes_overwritten_inside_a_parameter_file_are_detected(finished, tmp_path, caplog):
  cfg, workdir = _copy(finished, tmp_path)
  step_dir = os.path.join(checkpoints.checkpoint_dir(workdir), '3')
  assert integrity.verify(step_dir)
  target = max(_param_files(step_dir), key=os.path.getsize)
  with open(target, 'r+b') as f:  # 64 random bytes in the middle of the file.
    f.seek(os.path.getsize(target) // 2)
    f.write(np.random.default_rng(0).bytes(64))
  with pytest.raises(integrity.DamagedCheckpointError, match='differs from its checksum'):
    integrity.verify(step_dir)
  with caplog.at_level(logging.WARNING):
    assert restore.load_for_analysis(workdir).step == 2
  assert any('checkpoint step 3 in' in r.getMessage() and 'checksum' in r.getMessage()
             for r in caplog.records)


def test_resume_skips_a_non_finite_checkpoint(finished, tmp_path, caplog):
  cfg, workdir = _copy(finished, tmp_path)
  t = steps.Trainer(cfg, devices=jax.devices()[:1])
  mngr = checkpoints.manager(workdir, cfg)
  it = tasks.for_config(cfg).train_iterator()
  state, step = checkpoints.restore(mngr, t.abstract_state, it)
  assert step == 3
  bad = dict(state, params=jax.tree.map(lambda x: x.at[..., 0].set(jnp.inf), state['params']))
  checkpoints.save(mngr, 4, dict(bad, step=jnp.int32(4)), it, cfg)
  with caplog.at_level(logging.WARNING):
    _, step = checkpoints.restore(mngr, t.abstract_state, tasks.for_config(cfg).train_iterator())
  mngr.close()
  assert step == 3
  assert any('checkpoint step 4 in' in r.getMessage() and 'NaN/Inf' in r.getMessage()
             for r in caplog.records)


def test_a_missing_config_json_and_another_config_is_refused_writing_nothing(finished,
                                                                             tmp_path):
  cfg, workdir = _copy(finished, tmp_path)
  os.remove(os.path.join(workdir, run_config.CONFIG_FILE))
  other = tiny_config(cfg.data.path, num_train_steps=3, checkpoint_every_steps=1,
                      eval_every_steps=3, **{'model.model_dim': 64})
  before = sorted(os.listdir(workdir))
  with pytest.raises(validation.ConfigError, match=r'model.model_dim \(32 -> 64\)'):
    loop.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(workdir)) == before  # Nothing written, nothing moved.
  assert _steps(workdir) == [1, 2, 3]
  # The original config still resumes (from the checkpoints' own config).
  loop.train_and_evaluate(cfg, workdir)


def test_garbage_config_json_is_a_one_line_error_naming_it(finished, tmp_path):
  cfg, workdir = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), '3', 'config'))
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), '2', 'config'))
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), '1', 'config'))
  with open(os.path.join(workdir, run_config.CONFIG_FILE), 'w') as f:
    f.write('{"trunc')
  with pytest.raises(validation.ConfigError,
                     match=r'^workdir: .*config.json is not a posjax config'):
    loop.prepare(cfg, workdir)


def test_resume_after_the_corpus_changed_restarts_the_iterator(corpus, tmp_path, caplog):
  data = tmp_path / 'corpus'
  shutil.copytree(corpus, data)
  cfg = tiny_config(str(data), num_train_steps=2, checkpoint_every_steps=1, eval_every_steps=2)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(cfg, workdir)
  (data / 'doc00.txt').write_text('class def return x y\n' * 50)  # Edited: a rebuild.
  longer = tiny_config(str(data), num_train_steps=3, checkpoint_every_steps=1,
                       eval_every_steps=3)
  with caplog.at_level(logging.WARNING):
    loop.train_and_evaluate(longer, workdir)
  msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith('data: ')]
  assert len(msgs) == 1 and 'changed since step 2' in msgs[0], msgs


def test_a_data_dir_built_from_another_path_is_refused(corpus, tmp_path):
  d = str(tmp_path / 'tfds')
  builders.build('local_text', data_dir=d, size='full', path=corpus)
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'a.txt').write_text('something else entirely\n')
  cfg = tiny_config(str(other), **{'data.data_dir': d})
  with pytest.raises(validation.ConfigError, match=r'^data.path: local_text/full in .* was built '
                     r'from other inputs'):
    loop.prepare(cfg, str(tmp_path / 'run'))
  loop.prepare(tiny_config(corpus, **{'data.data_dir': d}), str(tmp_path / 'run'))


def test_a_resumed_run_leaves_one_record_per_step(corpus, tmp_path):
  cfg = tiny_config(corpus, num_train_steps=3, checkpoint_every_steps=2, eval_every_steps=3)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(cfg, workdir)
  shutil.rmtree(os.path.join(checkpoints.checkpoint_dir(workdir), '3'))  # As if killed after 2.
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path, 'a') as f:
    f.write('{"step": 3, "train/lo')  # A partial line from the crash.
  loop.train_and_evaluate(cfg, workdir)
  rows = [json.loads(l) for l in open(path)]
  train_steps = [r['step'] for r in rows if 'train/loss' in r]
  assert train_steps == [1, 2, 3], train_steps


def test_a_damaged_data_dir_is_a_one_line_error(data_dir, tmp_path):
  import glob
  d = str(tmp_path / 'tfds')
  shutil.copytree(data_dir, d)
  shard = sorted(glob.glob(os.path.join(d, 'listops', 'tiny', '*', '*train*array_record*')))[0]
  os.remove(shard)
  from test_tasks import config
  c = config('lra_listops', 'runlocal')
  c.data.data_dir = d
  with pytest.raises(validation.ConfigError, match=r'^data.data_dir: listops/tiny in .* is damaged '
                     r'\(.*is missing\); allowed: rebuild it'):
    loop.prepare(c, str(tmp_path / 'run'))
