"""Classification and synthetic-sequence experiments train through the entry point's job."""
import importlib.util
import json
import os

import pytest

from posjax import main, tasks
from posjax.data import builders
from posjax.workdir import restore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'configs', f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def config(name, arg):
  return _module(name).get_config(arg)


def _shrink(c):
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 4
  c.warmup_steps, c.log_every_steps = 1, 2
  c.model.update(num_layers=1, model_dim=32, mlp_dim=64, num_heads=2)
  return c


def _run(c, workdir, capsys):
  main.run_job(c, str(workdir))
  out = capsys.readouterr().out
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  return out, {k: v for r in rows for k, v in r.items()}


def test_listops_classification_trains(data_dir, tmp_path, capsys):
  c = _shrink(config('lra_listops', 'posenc=alibi,runlocal'))
  c.data.data_dir = data_dir
  out, metrics = _run(c, tmp_path / 'run', capsys)
  assert 'eval/accuracy@validation' in out
  assert 0 <= metrics['eval/accuracy@validation'] <= 1 and metrics['train/loss'] < 10
  restored = restore.load_for_analysis(str(tmp_path / 'run'))
  assert restored.step == 4 and 'head' in restored.params and restored.config.task == 'classification'


def test_synthetic_sequence_trains_and_reports_per_length(data_dir, tmp_path, capsys):
  c = _shrink(config('synthetic', 'task=reverse_string,posenc=rope,randomized,runlocal'))
  c.data.data_dir = data_dir
  out, metrics = _run(c, tmp_path / 'run', capsys)
  n = builders.SYNTHETIC_SIZES['tiny'][0]
  assert f'eval/sequence_accuracy@{10 * n}' in out  # The longest test length.
  assert 'eval/sequence_accuracy@in_distribution' in metrics  # Lengths 1..n.
  assert all(0 <= v <= 1 for k, v in metrics.items() if k.startswith('eval/sequence_accuracy'))


def test_randomized_positions_narrower_than_an_eval_row_is_one_line(data_dir, tmp_path,
                                                                       capsys):
  c = _shrink(config('synthetic', 'task=reverse_string,posenc=rope,randomized,runlocal'))
  c.data.data_dir = data_dir
  c.model.max_random_position = c.model.max_len  # Test rows of 10N are wider.
  with pytest.raises(SystemExit) as e:
    main.run_job(c, str(tmp_path / 'run'))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith(f'error: model.max_random_position: got {c.model.max_len}; allowed: >=')
  assert not (tmp_path / 'run').exists()


def test_rows_shorter_than_every_training_example_is_one_line(data_dir, tmp_path, capsys):
  c = _shrink(config('synthetic', 'task=reverse_string,posenc=rope,runlocal'))
  c.data.data_dir = data_dir
  c.seq_len = c.model.max_len = 1  # The shortest row (length 1) takes 2 tokens.
  with pytest.raises(SystemExit) as e:
    main.run_job(c, str(tmp_path / 'run'))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith('error: seq_len: got 1; allowed: >= 2 (no training example')
  assert not (tmp_path / 'run').exists()


def test_synthetic_config_fits_rows_and_random_positions_to_the_task():
  from posjax.data import synthetic_splits
  c = config('synthetic', 'task=passkey,runlocal')  # A fixed text longer than N.
  train, test = synthetic_splits.widths('passkey', c.data.size)
  assert c.seq_len == c.model.max_len >= train > 128
  assert c.model.max_random_position >= test > 1024


def test_missing_dataset_says_how_to_build_it(tmp_path, capsys):
  c = config('lra_listops', 'runlocal')
  c.data.data_dir = str(tmp_path / 'empty')
  with pytest.raises(SystemExit) as e:
    main.run_job(c, str(tmp_path / 'run'))
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()[-1]  # After any tfds progress bars.
  assert err.startswith('error: data.data_dir:') and 'python -m posjax.data.build listops' in err
  assert not (tmp_path / 'run').exists()


def test_retrieval_matching_trains(tmp_path, capsys):
  """LRA Retrieval end to end: AAN-format TSVs -> lra_retrieval -> the matcher."""
  tsv = tmp_path / 'manual'
  tsv.mkdir()
  for split, n in (('train', 24), ('eval', 8), ('test', 8)):
    rows = [f"{i % 2}\tA{i}\tB{i}\tb'paper {i} on topic {i % 2}'\tb'cites {i}'"
            for i in range(n)]
    (tsv / f'new_aan_pairs.{split}.tsv').write_text('\n'.join(rows) + '\n')
  builders.build('lra_retrieval', data_dir=str(tmp_path / 'tfds'), manual_dir=str(tsv))
  c = _shrink(config('lra_retrieval', 'posenc=t5,runlocal'))
  c.data.data_dir = str(tmp_path / 'tfds')
  c.seq_len = c.model.max_len = 32
  out, metrics = _run(c, tmp_path / 'run', capsys)
  assert 'eval/accuracy@validation' in out and metrics['train/loss'] < 10
  restored = restore.load_for_analysis(str(tmp_path / 'run'))
  assert restored.config.task == 'matching' and 'head' in restored.params


@pytest.mark.parametrize('name,arg', [
    ('lm', ''), ('lra_listops', ''), ('lra_pathfinder', ''), ('lra_pathfinder', 'res=128'),
    ('lra_text', ''), ('lra_retrieval', ''), ('lra_image', ''), ('synthetic', ''),
    ('lra_text', 'runlocal'), ('lra_image', 'runlocal,posenc=rope_2d')])
def test_every_config_is_consistent(name, arg):
  """Model kind matches the task, the model config parses, the schedule is valid,
  and sweep() names registered encodings."""
  from posjax import encodings, models, tasks
  from posjax.training import optim
  c = config(name, arg)
  mcfg = models.ModelConfig.from_config(c.model)
  assert mcfg.kind == tasks.for_config(c).model_kind
  assert c.seq_len <= mcfg.max_len and c.num_eval_batches > 0
  assert float(optim.make_schedule(c)(c.num_train_steps // 2)) > 0
  mod = _module(name)
  assert mod.sweep() and all(s['model.posenc'] in encodings.names() for s in mod.sweep())


class _Copy(tasks.Task):
  """A task made in the test: copy the previous token (in-memory data)."""
  name = 'copy_previous'
  model_kind = 'decoder'

  def check(self, mcfg):
    self.check_vocab(mcfg, 16)

  def data_fingerprint(self):
    return 'in-memory'

  def _batches(self, n, seed):
    import grain
    import numpy as np
    rng = np.random.default_rng(seed)
    L = self.config.seq_len
    rows = []
    for _ in range(n):
      x = rng.integers(4, 16, L + 1).astype(np.int32)
      rows.append({'inputs': x[1:], 'targets': x[:-1], 'positions': np.arange(L, dtype=np.int32),
                   'segment_ids': np.ones(L, np.int32), 'weights': np.ones(L, np.float32)})
    return grain.MapDataset.source(rows).repeat().batch(self.config.batch_size)

  def train_iterator(self, process_index=0, process_count=1):
    return iter(self._batches(64, 0).to_iter_dataset())

  def eval_sets(self, process_index=0, process_count=1):
    it = iter(self._batches(8, 1))
    return {'copy': [next(it)]}


def test_a_new_task_is_one_class_and_one_registry_entry(corpus, tmp_path, monkeypatch):
  """The trainer, validation and checkpointing run a task they have never seen,
  validating once and opening no data source of their own."""
  from posjax.data import inputs
  from posjax.training import validation
  monkeypatch.setitem(tasks._REGISTRY, _Copy.name, _Copy)
  calls = {'validate': 0, 'source': 0}
  real_validate, real_source = validation.validate, inputs.builder
  def count(name, fn):
    def wrapped(*a, **k):
      calls[name] += 1
      return fn(*a, **k)
    return wrapped
  monkeypatch.setattr(validation, 'validate', count('validate', real_validate))
  monkeypatch.setattr(inputs, 'builder', count('source', real_source))
  c = config('lm', 'runlocal')
  c.task, c.seq_len, c.batch_size, c.eval_batch_size = 'copy_previous', 8, 8, 8
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
  c.warmup_steps = 1
  c.model.update(num_layers=1, model_dim=32, mlp_dim=64, num_heads=2, max_len=8)
  main.run_job(c, str(tmp_path / 'run'))
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  assert 'eval/accuracy@copy' in rows[-1] and 'eval/perplexity@copy' not in rows[-1]
  assert calls == {'validate': 1, 'source': 0}
  assert restore.load_for_analysis(str(tmp_path / 'run')).step == 2


def test_the_lm_task_opens_its_corpus_once(corpus, tmp_path, monkeypatch):
  from posjax.data import inputs
  calls = []
  real = inputs.builder
  monkeypatch.setattr(inputs, 'builder', lambda c: calls.append(1) or real(c))
  c = config('lm', 'runlocal')
  c.data.path = corpus
  c.seq_len, c.eval_lengths, c.batch_size, c.eval_batch_size = 16, (16,), 8, 8
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 1
  c.warmup_steps = 0
  c.model.update(num_layers=1, model_dim=32, mlp_dim=64, num_heads=2, max_len=16)
  main.run_job(c, str(tmp_path / 'run'))
  assert len(calls) == 1


def test_image_batches_give_the_model_their_pixel_rows(data_dir):
  """Pathfinder's batches carry (row, column) position rows, which reach a 2D
  encoding through ``model_inputs`` (and change its output)."""
  import jax
  import numpy as np
  from posjax import models
  c = _shrink(config('lra_pathfinder', 'posenc=rope_2d,runlocal'))
  c.data.data_dir = data_dir
  task = tasks.for_config(c)
  batch = next(iter(task.eval_sets().values()))[0]
  args, kwargs = task.model_inputs(batch)
  rows = np.asarray(kwargs['position_rows'])
  assert rows.shape == (3, *batch['inputs'].shape)
  assert rows[1, 0, 33] == 1 and rows[2, 0, 33] == 1  # Pixel (1, 1) of a 32-wide image.
  assert set(task.dummy_batch(8)) == set(batch) - {'weight'}
  model = models.build(models.ModelConfig.from_config(c.model))
  params = model.init(jax.random.key(0), *args)['params']
  assert not np.allclose(model.apply({'params': params}, *args, **kwargs),
                         model.apply({'params': params}, *args), atol=1e-5)
