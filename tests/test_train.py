"""The trainer on 8 fake CPU devices: shardings, 1-vs-8 device losses, resume,
analysis loading, SIGTERM (bad input and crashes: test_reliability.py). Tiny
models; the file runs in ~1 min."""
import importlib.util
import json
import os
import shutil
import signal

import flax.linen as nn
import jax
import numpy as np
import pytest

from posjax import tasks
from posjax.training import loop, sharding, steps, validation
from posjax.workdir import restore, run_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lm_module():
  spec = importlib.util.spec_from_file_location('lm_config', os.path.join(ROOT, 'configs', 'lm.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def tiny_config(corpus, **overrides):
  c = _lm_module().get_config('posenc=rope,runlocal')
  c.data.path = corpus
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 100
  c.checkpoint_every_steps = 100
  c.batch_size = 8
  c.eval_batch_size = 8
  c.num_eval_batches = 1
  c.seq_len = 16
  c.eval_lengths = [16, 32]
  c.warmup_steps = 1
  c.model.update(num_layers=1, num_heads=4, model_dim=32, mlp_dim=64, max_len=16,
                 dtype='float32')
  c.mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}
  for k, v in overrides.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  return c


# ---------------------------------------------------------------------------
# Mesh and shardings.

def test_mesh_size_mismatch_is_a_clear_error():
  assert sharding.mesh_shape({'data': -1, 'fsdp': 2, 'tensor': 2}, 8) == (2, 2, 2)
  with pytest.raises(ValueError, match=r'^mesh: .*allowed'):
    sharding.mesh_shape({'data': 3, 'fsdp': 1, 'tensor': 1}, 8)
  with pytest.raises(ValueError, match=r'^mesh: .*allowed'):
    sharding.mesh_shape({'data': -1, 'fsdp': 3, 'tensor': 1}, 8)


def _expected_spec(names, rules):
  table = dict(rules)
  return jax.P(*[table.get(n) for n in names])


@pytest.fixture(scope='module')
def reference(corpus):
  """Two steps on one device: the batches, the losses and the final params."""
  cfg = tiny_config(corpus, mesh={'data': 1, 'fsdp': 1, 'tensor': 1})
  one = steps.Trainer(cfg, devices=jax.devices('cpu')[:1])
  it = tasks.for_config(cfg).train_iterator()
  batches = [next(it) for _ in range(2)]
  state, losses = one.init_state(), []
  for b in batches:
    state, m = one.train_step(state, b)
    losses.append(float(m['loss']))
  return batches, losses, jax.device_get(state['params'])


@pytest.mark.parametrize('shape', [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_steps_match_single_device(corpus, reference, shape):
  cpus = jax.devices('cpu')
  assert len(cpus) == 8, 'conftest must fake 8 CPU devices'
  cfg = tiny_config(corpus, mesh=dict(zip(sharding.MESH_AXES, shape)))
  many = steps.Trainer(cfg, devices=cpus)

  # Parameter shardings follow the rules.
  boxed = jax.eval_shape(
      lambda r: steps._boxed_init(many.model, many.tx, many.task, cfg, r), many.rng)['params']
  leaves = jax.tree.leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  specs = jax.tree.leaves(many.state_shardings['params'])
  assert len(specs) == len(leaves)
  sharded = 0
  for (path, leaf), got in zip(leaves, specs):
    names = leaf.names if isinstance(leaf, nn.Partitioned) else ()  # Unnamed: replicated.
    assert got.spec == _expected_spec(names, many.rules), (path, got.spec, names)
    sharded += any(a is not None for a in got.spec)
  if shape != (8, 1, 1):
    assert sharded > 0

  batches, losses, params = reference
  state = many.init_state()
  for b, want in zip(batches, losses):
    state, m = many.train_step(state, b)
    np.testing.assert_allclose(float(m['loss']), want, rtol=2e-5)
  for x, y in zip(jax.tree.leaves(jax.device_get(state['params'])), jax.tree.leaves(params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  # Each state leaf lives where the shardings say.
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(many.state_shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim)


# ---------------------------------------------------------------------------
# Checkpoints.

def test_resume_is_bit_identical_and_loads_for_analysis(corpus, tmp_path):
  cfg = tiny_config(corpus, num_train_steps=4, checkpoint_every_steps=2,
                    eval_every_steps=4)
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  final = loop.train_and_evaluate(cfg, a)
  assert np.isfinite(final['eval/loss@32']) and final['step'] == 4
  shutil.copytree(a, b)
  shutil.rmtree(os.path.join(b, 'checkpoints', '4'))
  loop.train_and_evaluate(cfg, b)  # Resumes from step 2.

  ra, rb = restore.load_for_analysis(a), restore.load_for_analysis(b)
  assert ra.step == rb.step == 4
  for x, y in zip(jax.tree.leaves(ra.params), jax.tree.leaves(rb.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert ra.config.model.to_dict() == json.loads(cfg.model.to_json())
  assert ra.config.num_train_steps == 4
  cpu = jax.devices('cpu')[0]
  assert all(x.devices() == {cpu} for x in jax.tree.leaves(ra.params))
  assert restore.load_for_analysis(a, step=2).step == 2
  with open(os.path.join(a, 'metrics.jsonl')) as f:
    rows = [json.loads(l) for l in f]
  assert {'train/loss', 'train/accuracy', 'train/perplexity', 'train/bits_per_byte',
          'train/grad_norm', 'train/param_norm', 'train/learning_rate',
          'train/tokens_per_sec', 'train/step_time'} <= set(rows[0])
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(a))

  # The same workdir with an incompatible experiment: refused, nothing written.
  other = tiny_config(corpus, num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4)
  other.model.posenc, other.model.num_layers = 'alibi', 3
  before = sorted(os.listdir(a)), os.path.getmtime(os.path.join(a, 'config.json'))
  with pytest.raises(ValueError, match=r"workdir: .*model.num_layers \(1 -> 3\), model.posenc \('rope' -> 'alibi'\)"):
    loop.train_and_evaluate(other, a)
  assert (sorted(os.listdir(a)), os.path.getmtime(os.path.join(a, 'config.json'))) == before


def _patch_step(monkeypatch, at_call, action):
  real = steps.Trainer.train_step
  calls = []
  def step(self, state, batch):
    calls.append(1)
    state, metrics = real(self, state, batch)
    if len(calls) == at_call:
      metrics = action(metrics)
    return state, metrics
  monkeypatch.setattr(steps.Trainer, 'train_step', step)


def test_sigterm_checkpoints_and_exits_zero(corpus, tmp_path, monkeypatch):
  cfg = tiny_config(corpus, num_train_steps=6)
  def sigterm(metrics):
    os.kill(os.getpid(), signal.SIGTERM)
    return metrics
  _patch_step(monkeypatch, 2, sigterm)
  with pytest.raises(SystemExit) as e:
    loop.train_and_evaluate(cfg, str(tmp_path))
  assert e.value.code == 0
  assert restore.load_for_analysis(str(tmp_path)).step == 2
  assert signal.getsignal(signal.SIGTERM) is not None


def test_sigterm_during_evaluation_saves_at_once_and_evaluates_after_the_resume(
    corpus, tmp_path, monkeypatch):
  """A preemption must not wait for an evaluation (at paper scale it can outlast
  SLURM's warning): the evaluation is abandoned after the batch in flight, the step
  saved as still to be evaluated, and the resumed run evaluates it first and ends
  bit-identical to an uninterrupted run."""
  cfg = tiny_config(corpus, num_train_steps=4, eval_every_steps=2, num_eval_batches=6)
  straight = str(tmp_path / 'straight')
  loop.train_and_evaluate(cfg, straight)
  real, asked = steps.Trainer.evaluate, []
  def evaluate(self, params, eval_sets, stop=None):
    def spy():  # SIGTERM arrives while the second of 12 batches runs.
      asked.append(1)
      if len(asked) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
      return stop()
    return real(self, params, eval_sets, spy if stop else None)
  monkeypatch.setattr(steps.Trainer, 'evaluate', evaluate)
  stopped = str(tmp_path / 'stopped')
  with pytest.raises(SystemExit) as e:
    loop.train_and_evaluate(cfg, stopped)
  assert e.value.code == 0 and len(asked) == 2  # No batch after the signal's.
  assert run_config.latest_step(stopped) == 2 and run_config.pending_eval(stopped, 2)
  assert not any('eval/loss@16' in r for r in _rows(stopped))
  monkeypatch.setattr(steps.Trainer, 'evaluate', real)
  loop.train_and_evaluate(cfg, stopped)
  evals = lambda w: [r for r in _rows(w) if 'eval/loss@16' in r]  # noqa: E731
  assert [r['step'] for r in evals(stopped)] == [2, 4]
  assert evals(stopped) == evals(straight)
  a, b = restore.load_for_analysis(straight), restore.load_for_analysis(stopped)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_loss_stops_naming_the_step(corpus, tmp_path, monkeypatch):
  cfg = tiny_config(corpus, num_train_steps=4)
  _patch_step(monkeypatch, 3, lambda m: {**m, 'loss': m['loss'] * np.nan})
  with pytest.raises(FloatingPointError, match=r'^step 3: loss is nan'):
    loop.train_and_evaluate(cfg, str(tmp_path))


# ---------------------------------------------------------------------------
# Extending a run, the schedule it keeps, profiling.

def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


def test_extended_run_keeps_its_schedule_and_fewer_steps_are_refused(corpus, tmp_path):
  cfg = tiny_config(corpus, num_train_steps=4, checkpoint_every_steps=2, eval_every_steps=4)
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(cfg, workdir)
  assert json.load(open(os.path.join(workdir, 'config.json')))['schedule_steps'] == 4
  longer = tiny_config(corpus, num_train_steps=8, checkpoint_every_steps=2, eval_every_steps=4)
  loop.train_and_evaluate(longer, workdir)
  lr = {r['step']: r['train/learning_rate'] for r in _rows(workdir) if 'train/learning_rate' in r}
  peak = cfg.learning_rate
  # The cosine over 4 steps ended at 0.1 * peak; the extension continues there
  # (a schedule recomputed over 8 steps would jump back up to ~0.55 * peak).
  assert lr[4] > 0.1 * peak and all(np.isclose(lr[s], 0.1 * peak) for s in (5, 6, 7, 8)), lr
  assert json.load(open(os.path.join(workdir, 'config.json')))['schedule_steps'] == 4
  assert restore.load_for_analysis(workdir).step == 8

  before = os.path.getmtime(os.path.join(workdir, 'config.json'))
  with pytest.raises(validation.ConfigError, match=r'^num_train_steps: got 6; allowed: >= 8'):
    loop.train_and_evaluate(tiny_config(corpus, num_train_steps=6), workdir)
  assert os.path.getmtime(os.path.join(workdir, 'config.json')) == before

  # An explicit new schedule length is used as given.
  cfg = tiny_config(corpus, num_train_steps=10, schedule_steps=12, eval_every_steps=10)
  config, _, _ = loop.prepare(cfg, workdir)
  assert config.schedule_steps == 12


def test_profile_steps_write_a_trace(corpus, tmp_path):
  cfg = tiny_config(corpus, num_train_steps=3, profile_steps=(2, 3))
  loop.train_and_evaluate(cfg, str(tmp_path))
  traces = [f for d, _, fs in os.walk(tmp_path / loop.PROFILE_DIR) for f in fs
            if f.endswith('.xplane.pb')]
  assert traces
  with pytest.raises(validation.ConfigError, match=r'^profile_steps: got \(2, 9\)'):
    loop.prepare(tiny_config(corpus, num_train_steps=3, profile_steps=(2, 9)), str(tmp_path / 'x'))


def test_init_from_starts_a_new_run_from_another_runs_parameters(corpus, tmp_path):
  base = str(tmp_path / 'base')
  loop.train_and_evaluate(tiny_config(corpus, num_train_steps=2), base)
  tuned = str(tmp_path / 'tuned')  # A "fine-tune" whose one update is negligible.
  loop.train_and_evaluate(tiny_config(corpus, num_train_steps=1, warmup_steps=0,
                                       learning_rate=1e-12, init_from=base), tuned)
  a, b = restore.load_for_analysis(base).params, restore.load_for_analysis(tuned).params
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
  with pytest.raises(validation.ConfigError, match=r'^init_from: cannot initialise from '):
    loop.train_and_evaluate(tiny_config(corpus, num_train_steps=1, warmup_steps=0, init_from=base,
                                         **{'model.mlp_dim': 48}), str(tmp_path / 'other'))
  assert not os.path.exists(tmp_path / 'other')
  typo = tmp_path / 'bsae'  # A missing source: one line, and nothing created there.
  with pytest.raises(validation.ConfigError, match=r'^init_from: cannot initialise from .*'
                     r'FileNotFoundError: no checkpoint in '):
    loop.train_and_evaluate(tiny_config(corpus, init_from=str(typo)), str(tmp_path / 'third'))
  assert not os.path.exists(typo) and not os.path.exists(tmp_path / 'third')
