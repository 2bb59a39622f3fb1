"""Every registered encoding trains a few steps through the entry point's job."""
import importlib.util
import json
import os

import pytest

from posjax import encodings, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lm_config(arg):
  spec = importlib.util.spec_from_file_location('lm_config', os.path.join(ROOT, 'configs', 'lm.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_sweep_lists_every_encoding():
  spec = importlib.util.spec_from_file_location('lm_config', os.path.join(ROOT, 'configs', 'lm.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert sorted(o['model.posenc'] for o in mod.sweep()) == encodings.names()


# One encoding per hook (embed, qk, shared bias, values, carried bias) by default;
# the rest (same code paths, also covered per encoding by test_models.py) with --runslow.
_DEFAULT = ('learned', 'rope', 't5', 'shaw', 'cope')


@pytest.mark.parametrize('posenc', [n if n in _DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                    for n in encodings.names()])
def test_every_encoding_trains_through_main(posenc, corpus, tmp_path, capsys):
  c = lm_config(f'runlocal,posenc={posenc}')
  c.data.path = corpus
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 3
  c.log_every_steps, c.warmup_steps = 1, 1
  c.seq_len, c.batch_size, c.eval_batch_size, c.num_eval_batches = 32, 8, 8, 1
  c.eval_lengths = [64]  # Longer than training: one extrapolation eval (one compile).
  c.model.update(num_layers=1, model_dim=32, mlp_dim=64, num_heads=2,
                 max_len=64 if posenc == 'learned' else 32)
  workdir = tmp_path / 'run'
  main.run_job(c, str(workdir))
  out = capsys.readouterr().out
  assert 'final evaluation:' in out and 'eval/loss@64' in out
  rows = [json.loads(l) for l in open(workdir / 'metrics.jsonl')]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert len(losses) == 3 and all(l == l and l < 20 for l in losses), losses
  assert os.listdir(workdir / 'checkpoints')
