"""Compile time of the real train step against depth: plain and scanned layers.

  python experiments/compile_benchmark.py                     # 2 and 24 layers, both layouts
  python experiments/compile_benchmark.py --layers=2,12,24 --scan=true

The model and batch are configs/lm.py:runlocal's (6-layer default changed to each
``--layers``); the step is ``posjax.training.steps.Trainer``'s jitted train step
(AdamW, sharded over this host's devices). Each row lowers and compiles it once
(a fresh jit, no cache) and reports both times; ``ratio`` is the compile time over
the fewest layers' of the same layout. Steady-state step time (median of
``--steps`` steps after the compiled one) shows what the layout costs at run time.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
if __name__ == '__main__':  # This checkout's posjax, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention_benchmark as ab  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'configs'))
import lm  # noqa: E402  (configs/lm.py)
from posjax.training.steps import Trainer  # noqa: E402

flags.DEFINE_list('layers', ['2', '24'], 'Depths to compile.')
flags.DEFINE_list('scan', ['false', 'true'], 'model.scan_layers values.')
flags.DEFINE_integer('steps', 5, 'Timed steps after compilation (0: none).')
FLAGS = flags.FLAGS


def _config(layers: int, scan: bool):
  c = lm.get_config('runlocal')
  c.model.num_layers, c.model.scan_layers = layers, scan
  return c


def measure(layers: int, scan: bool) -> dict:
  trainer = Trainer(_config(layers, scan))
  state = trainer.init_state()
  one = {k: np.asarray(v) for k, v in trainer.task.dummy_batch(trainer.config.seq_len).items()}
  batch = trainer.global_batch({k: np.repeat(v, trainer.config.batch_size, 0)
                                for k, v in one.items()})
  with trainer._context():
    t0 = time.perf_counter()
    lowered = trainer._train_step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    times = []
    for _ in range(FLAGS.steps):
      t = time.perf_counter()
      state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
  return {'layers': layers, 'scan': scan, 'lower_s': t1 - t0, 'compile_s': t2 - t1,
          'step_s': statistics.median(times) if times else None}


def main(argv):
  del argv
  rows = [measure(int(n), s == 'true') for s in FLAGS.scan for n in FLAGS.layers]
  print('| layers | scan_layers | lower_s | compile_s | ratio | step_s |\n|---|---|---|---|---|---|')
  for r in rows:
    first = min((x for x in rows if x['scan'] == r['scan']), key=lambda x: x['layers'])
    ratio = (r['lower_s'] + r['compile_s']) / (first['lower_s'] + first['compile_s'])
    print(f"| {r['layers']} | {r['scan']} | {r['lower_s']:.2f} | {r['compile_s']:.2f} | "
          f"{ratio:.2f} | {ab._fmt(r['step_s'])} |", flush=True)
  print(f'# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}')


if __name__ == '__main__':
  ab.run(main)
