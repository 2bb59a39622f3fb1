"""Accelerator benchmark of whole training steps (issue 13's GPU targets).

  python experiments/gpu_benchmark.py                     # all three parts
  python experiments/gpu_benchmark.py --parts=mfu --mfu_batch=8
  POSJAX_EMULATE_KERNELS=1 python experiments/gpu_benchmark.py --smoke   # any CPU

Three parts, each printing a markdown table (and ``--csv`` rows):

``mfu``: a ~350M decoder (24 layers, model_dim 1024, 16 heads, mlp 4096, bf16,
rope, ``attention=auto``) at L = 2048: tokens/s of the real jitted train step
(posjax.training.steps.Trainer: AdamW, sharded over every local device) and MFU =
achieved FLOP/s / (``--peak_tflops`` x devices). FLOPs per token are PaLM's
(Chowdhery et al. 2022, appendix B): 6 N + 6 n_layers L d (causal attention;
N = non-embedding parameters).

``kernels``: one decoder layer forward + backward (head dim 128, bf16) for each
(encoding, implementation) in ``--kernel_cases`` at ``--kernel_lengths``, as the
time of cuDNN without bias divided by the case's time (1.0 = as fast as cuDNN; the
target for the in-kernel-bias ``pallas`` cases is 0.8). ``pallas`` lowers to Triton
(tests/test_lowering.py) but has never run on a GPU; a case that fails says why and
the rest go on. T5 (``lookup``: 32 selects per logit) and FIRE (``scalar_mlp``: 32
unrolled hidden units) are measured both in-kernel and through ``flash``, posjax's
portable XLA implementation, which reads T5's table with a gather.

``longest``: the longest L (doubling from 8192 to ``--max_length``) at which a
125M decoder (12 layers, 768, 12 heads, bf16, rope, full remat) compiles within
device memory and runs one train step with batch 1.
"""
from __future__ import annotations

import os
import sys
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
if __name__ == '__main__':  # This checkout's posjax, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention_benchmark as ab  # noqa: E402  (its flags: --repeats, --dtype, ...)
from posjax import config_lib  # noqa: E402
from posjax.training import memory  # noqa: E402
from posjax.training.steps import Trainer  # noqa: E402

flags.DEFINE_list('parts', ['mfu', 'kernels', 'longest'], 'Which parts to run.')
flags.DEFINE_float('peak_tflops', 989.0, 'Dense bf16 peak per device (H100/H200 SXM: 989).')
flags.DEFINE_integer('mfu_batch', 8, 'mfu: rows per step (global).')
flags.DEFINE_integer('mfu_steps', 10, 'mfu: timed steps after 2 warm-up steps.')
flags.DEFINE_list('kernel_lengths', ['2048', '8192', '32768'], 'kernels: lengths.')
flags.DEFINE_list('kernel_cases', ['none:cudnn', 'rope:cudnn', 'none:pallas', 'alibi:pallas',
                                   'kerple_log:pallas', 't5:pallas', 'fire:pallas',
                                   'none:flash', 'alibi:flash', 't5:flash'],
                  'kernels: posenc:attention pairs; none:cudnn is the reference.')
flags.DEFINE_integer('max_length', 131072, 'longest: the largest L tried.')
flags.DEFINE_bool('smoke', False, 'Tiny shapes, to check the script runs (e.g. on CPU).')
FLAGS = flags.FLAGS


def _config(layers, dim, heads, length, batch, remat='none'):
  c = config_lib.base_config('rope')
  c.seq_len, c.batch_size, c.eval_lengths = length, batch, (length,)
  c.model.update(num_layers=layers, model_dim=dim, num_heads=heads, mlp_dim=4 * dim,
                 max_len=length, dtype='bfloat16', attention='auto', remat=remat,
                 block_size=min(512, length))
  return c


def _batch(trainer, length, batch):
  one = {k: np.asarray(v) for k, v in trainer.task.dummy_batch(length).items()}
  rng = np.random.default_rng(0)
  one['inputs'] = one['targets'] = rng.integers(4, 256, (1, length)).astype(np.int32)
  return {k: np.repeat(v, batch, 0) for k, v in one.items()}


def _step_seconds(config, steps):
  trainer = Trainer(config)
  state = trainer.init_state()
  batch = _batch(trainer, config.seq_len, config.batch_size)
  for _ in range(2):
    state, _ = trainer.train_step(state, batch)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(steps):
    state, _ = trainer.train_step(state, batch)
  jax.block_until_ready(state)
  params = sum(x.size for x in jax.tree.leaves(state['params']))
  return (time.perf_counter() - t) / steps, params


def mfu():
  layers, dim, heads, length = (2, 128, 2, 256) if FLAGS.smoke else (24, 1024, 16, 2048)
  c = _config(layers, dim, heads, length, FLAGS.mfu_batch)
  sec, params = _step_seconds(c, 2 if FLAGS.smoke else FLAGS.mfu_steps)
  n = params - c.model.vocab_size * dim  # Non-embedding (the embedding is tied).
  tokens = FLAGS.mfu_batch * length
  flops = (6 * n + 6 * layers * length * dim) * tokens / sec
  peak = FLAGS.peak_tflops * 1e12 * jax.device_count()
  yield {'model': f'{layers}x{dim}', 'params_M': params / 1e6, 'length': length,
         'batch': FLAGS.mfu_batch, 'step_s': sec, 'tokens_per_s': tokens / sec,
         'mfu': flops / peak}


def kernels():
  lengths = [256] if FLAGS.smoke else [int(x) for x in FLAGS.kernel_lengths]
  ab.DIM, ab.HEADS = (64, 2) if FLAGS.smoke else (1024, 8)  # Head dim 32 / 128.
  FLAGS.dtype = 'bfloat16'
  for length in lengths:
    times = {}
    for case in FLAGS.kernel_cases:
      posenc, attention = case.split(':')
      try:
        times[case] = ab._time(*ab.layer_step(posenc, attention, length))[0]
      except Exception as e:  # noqa: BLE001  (A kernel that does not lower: say why, go on.)
        print(f'{case} at {length}: failed: {" ".join(str(e).split())[:300]}', flush=True)
        times[case] = None
    ref = times.get('none:cudnn')
    for case, sec in times.items():
      yield {'length': length, 'case': case, 'seconds': sec,
             'cudnn_none_over_case': ref / sec if ref and sec else None}


def longest():
  layers, dim, heads = (2, 64, 2) if FLAGS.smoke else (12, 768, 12)
  length, top = (256, 1024) if FLAGS.smoke else (8192, FLAGS.max_length)
  while length <= top:
    try:
      sec, _ = _step_seconds(_config(layers, dim, heads, length, 1, remat='full'), 1)
      yield {'length': length, 'fits': True, 'step_s': sec}
    except (memory.ResourceError, jax.errors.JaxRuntimeError) as e:
      yield {'length': length, 'fits': False, 'step_s': None,
             'reason': ' '.join(str(e).split())[:120]}
      return
    length *= 2


def _print(name, rows):
  header = None
  for row in rows:
    if header is None:
      header = list(row) + (['reason'] if 'reason' not in row and name == 'longest' else [])
      print(f'\n## {name}\n\n| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
    print('| ' + ' | '.join(ab._fmt(row.get(h)) if isinstance(row.get(h), float) or
                            row.get(h) is None else str(row[h]) for h in header) + ' |',
          flush=True)


def main(argv):
  del argv
  for part in FLAGS.parts:
    _print(part, {'mfu': mfu, 'kernels': kernels, 'longest': longest}[part]())
  print(f'\n# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}',
        flush=True)


if __name__ == '__main__':
  ab.run(main)  # app.run, with --help exiting 0.
