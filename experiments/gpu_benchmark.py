"""Accelerator benchmark that fits a device lease: correctness, kernels, MFU, longest L.

  python experiments/gpu_benchmark.py --out=/tmp/gpu                 # all parts, 300 s
  python experiments/gpu_benchmark.py --parts=mfu --mfu_batches=8,16 --profile_steps=3
  POSJAX_EMULATE_KERNELS=1 python experiments/gpu_benchmark.py --smoke --out=/tmp/g  # any CPU
  bash experiments/gpu/run_on_device.sh        # on the lent GPU (installs the carried wheels)

Parts, in this order, each writing ``<out>/<part>.md`` and ``<out>/<part>.csv``
after every case (a kill keeps what finished) and printing one line per case:

``check``: every implementation (flash, pallas, cudnn, splash: those that can serve
the case here, by ``vendor.why_not``) against ``dense`` on packed rows (two
documents per row, restarting positions), loss and gradients of a one-layer
decoder, float32 and bf16, as relative errors (L2 norm of the difference over the
norm of dense's). ok: bf16 value within 1e-2 and gradients within 2e-2; float32
within 1e-3 and 2e-3 (GPU float32 dots may run in TF32).

``kernels``: one decoder layer forward + backward (head dim 128, bf16) per
(encoding, implementation) at ``--kernel_lengths``: compile seconds, step seconds
(median of ``--repeats``) and cuDNN-without-bias's step time over the case's (1.0 =
as fast as cuDNN; target for in-kernel ALiBi: 0.8).

``mfu``: the ~350M decoder (24 x 1024, 16 heads, mlp 4096, bf16, rope,
``attention=auto``, the model defaults: scanned layers, 'auto' tiles) at L = 2048,
one row per ``--mfu_batches``: compile seconds apart from step seconds, tokens/s
and MFU = achieved FLOP/s / (``--peak_tflops`` x devices), FLOPs per token from
PaLM (Chowdhery et al. 2022, app. B): 6 N + 6 n_layers L d. ``--profile_steps``
traces that many steps of the first batch into ``<out>/profile``.

``longest``: the longest L (doubling from 8192 to ``--max_length``) at which a
125M decoder (12 x 768, bf16, rope, full remat) runs a train step with batch 1.

``--budget_s`` covers everything, compiles included: a case starts only if the
time left exceeds the longest case of its part so far (and ``--case_min_s``);
the others are listed as ``skipped (budget)``. A failing case prints one line and
the rest go on.
"""
from __future__ import annotations

import csv
import datetime
import os
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
if __name__ == '__main__':  # This checkout's posjax, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attention_benchmark as ab  # noqa: E402  (its flags: --repeats, --dtype, ...)
from posjax import config_lib, models  # noqa: E402
from posjax.models.kernels import vendor  # noqa: E402
from posjax.training import memory  # noqa: E402
from posjax.training.steps import Trainer  # noqa: E402

PARTS = ('check', 'kernels', 'mfu', 'longest')
flags.DEFINE_list('parts', list(PARTS), 'Which parts to run, in this order.')
flags.DEFINE_string('out', '', 'Folder for each part\'s .md and .csv ("" = print only).')
flags.DEFINE_float('budget_s', 300.0, 'Seconds for everything, compiles included.')
flags.DEFINE_float('case_min_s', 10.0, 'A case starts only with at least this much left.')
flags.DEFINE_float('peak_tflops', 989.0, 'Dense bf16 peak per device (H100/H200 SXM: 989).')
flags.DEFINE_list('mfu_batches', ['8', '16', '32'], 'mfu: rows per step (global).')
flags.DEFINE_integer('mfu_steps', 10, 'mfu: timed steps after the compiled one.')
flags.DEFINE_integer('profile_steps', 0, 'mfu: steps traced into <out>/profile (0: none).')
flags.DEFINE_list('check_posencs', ['none', 'rope', 'alibi', 't5', 'kerple_log', 'fire'],
                  'check: encodings.')
flags.DEFINE_list('kernel_lengths', ['2048', '8192', '32768'], 'kernels: lengths.')
flags.DEFINE_list('kernel_cases', ['none:cudnn', 'rope:cudnn', 'none:pallas', 'alibi:pallas',
                                   'alibi:flash', 'kerple_log:pallas', 'kerple_log:flash',
                                   't5:pallas', 't5:flash', 'fire:pallas', 'fire:flash'],
                  'kernels: posenc:attention pairs; none:cudnn is the reference.')
flags.DEFINE_integer('max_length', 131072, 'longest: the largest L tried.')
flags.DEFINE_bool('smoke', False, 'Tiny shapes, to check the script runs (e.g. on CPU).')
FLAGS = flags.FLAGS
IMPLEMENTATIONS = ('flash', 'pallas', 'cudnn', 'splash')
TOLERANCE = {'bfloat16': (1e-2, 2e-2), 'float32': (1e-3, 2e-3)}  # value, gradients


class Budget:
  """Seconds left of ``--budget_s`` and whether a part's next case fits."""

  def __init__(self, seconds: float):
    self.end, self.longest = time.perf_counter() + seconds, 0.0

  def left(self) -> float:
    return self.end - time.perf_counter()

  def fits(self) -> bool:
    return self.left() > max(self.longest, FLAGS.case_min_s)

  def timed(self, fn, *args):
    t = time.perf_counter()
    try:
      return fn(*args)
    finally:
      self.longest = max(self.longest, time.perf_counter() - t)


class Table:
  """One part's rows: printed as they come, its .md and .csv rewritten each time."""

  def __init__(self, name: str, header: str):
    self.name, self.header, self.rows = name, header, []

  def add(self, row: dict, line: str | None = None) -> None:
    self.rows.append(row)
    print(line or f'{self.name}: ' + ', '.join(f'{k} {_fmt(v)}' for k, v in row.items()),
          flush=True)
    if FLAGS.out:
      self._write()

  def _write(self) -> None:
    keys = list(dict.fromkeys(k for row in self.rows for k in row))
    with open(os.path.join(FLAGS.out, f'{self.name}.csv'), 'w', newline='') as f:
      writer = csv.DictWriter(f, keys)
      writer.writeheader()
      writer.writerows(self.rows)
    lines = [f'## {self.name}', '', self.header, '', '| ' + ' | '.join(keys) + ' |',
             '|' + '---|' * len(keys)]
    lines += ['| ' + ' | '.join(_fmt(row.get(k)) for k in keys) + ' |' for row in self.rows]
    with open(os.path.join(FLAGS.out, f'{self.name}.md'), 'w') as f:
      f.write('\n'.join(lines) + '\n')


def _fmt(v) -> str:
  return '' if v is None else f'{v:.3g}' if isinstance(v, float) else str(v)


def _error(e: Exception) -> str:
  return f'failed: {type(e).__name__}: {" ".join(str(e).split())[:200]}'


# -------------------------------------------------------------------- check


def _check_case(posenc, impl, dtype, length):
  cfg = models.ModelConfig.from_config(dict(
      kind='decoder', vocab_size=64, num_layers=1, num_heads=2, model_dim=128, mlp_dim=256,
      max_len=length, posenc=posenc, attention='dense', dtype=dtype,
      block_size=16 if FLAGS.smoke else 'auto'))
  half = length // 2 + 3
  pos = jnp.asarray([list(range(length)), list(range(half)) + list(range(length - half))])
  seg = jnp.asarray([[1] * length, [1] * half + [2] * (length - half)])
  tokens = jax.random.randint(jax.random.key(3), (2, length), 4, 64)
  params = models.build(cfg).init(jax.random.key(0), tokens, pos, seg)['params']
  w = jax.random.normal(jax.random.key(7), tokens.shape + (cfg.vocab_size,))

  def value_and_grads(c):
    loss = lambda p: (models.build(c).apply({'params': p}, tokens, pos, seg)  # noqa: E731
                      .astype(jnp.float32) * w).sum()
    v, g = jax.jit(jax.value_and_grad(loss))(params)
    return np.float64(v), np.concatenate([np.ravel(np.asarray(x, np.float64))
                                          for x in jax.tree.leaves(g)])
  (v0, g0), (v1, g1) = value_and_grads(cfg), value_and_grads(cfg.replace(attention=impl))
  rel = lambda a, b: float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))  # noqa: E731
  return rel(np.atleast_1d(v1), np.atleast_1d(v0)), rel(g1, g0)


def check(budget: Budget):
  table = Table('check', 'Relative errors against dense (loss value, all gradients), '
                'packed rows.')
  length = 40 if FLAGS.smoke else 512
  for dtype in ('float32', 'bfloat16'):
    for impl in IMPLEMENTATIONS:
      for posenc in FLAGS.check_posencs:
        cfg = models.ModelConfig(posenc=posenc, dtype=dtype, max_len=length, attention=impl)
        why = vendor.why_not(impl, cfg, length) if impl in vendor.PLATFORMS else None
        if why:
          continue  # Not servable here: not a case.
        row = {'attention': impl, 'posenc': posenc, 'dtype': dtype}
        if not budget.fits():
          table.add({**row, 'result': 'skipped (budget)'})
          continue
        try:
          value, grads = budget.timed(_check_case, posenc, impl, dtype, length)
        except Exception as e:  # noqa: BLE001  (One line; the rest go on.)
          table.add({**row, 'result': _error(e)})
          continue
        ok = value <= TOLERANCE[dtype][0] and grads <= TOLERANCE[dtype][1]
        table.add({**row, 'value_rel_err': value, 'grad_rel_err': grads,
                   'result': 'ok' if ok else 'FAIL'},
                  f'check {impl} {posenc} {dtype}: value rel err {value:.2e}, grad rel err '
                  f'{grads:.2e}: {"ok" if ok else "FAIL"}')


# -------------------------------------------------------------------- kernels


def _compile_and_time(fn, *args):
  """(compile seconds, median step seconds) of ``fn(*args)``."""
  t = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t
  return compile_s, ab.median_time(compiled, *args)


def kernels(budget: Budget):
  table = Table('kernels', 'One decoder layer forward + backward, bf16; cudnn_over_case: '
                'cuDNN-without-bias step time over the case\'s.')
  lengths = [256] if FLAGS.smoke else [int(x) for x in FLAGS.kernel_lengths]
  ab.DIM, ab.HEADS = (64, 2) if FLAGS.smoke else (1024, 8)  # Head dim 32 / 128.
  FLAGS.dtype = 'bfloat16'
  block_size = 16 if FLAGS.smoke else 'auto'
  for length in lengths:
    ref = None
    for case in FLAGS.kernel_cases:
      posenc, attention = case.split(':')
      row = {'length': length, 'case': case}
      if not budget.fits():
        table.add({**row, 'result': 'skipped (budget)'})
        continue
      try:
        compile_s, step_s = budget.timed(
            lambda: _compile_and_time(*ab.layer_step(posenc, attention, length, block_size)))
      except Exception as e:  # noqa: BLE001
        table.add({**row, 'result': _error(e)})
        continue
      ref = step_s if case == 'none:cudnn' else ref
      table.add({**row, 'compile_s': compile_s, 'step_s': step_s,
                 'cudnn_over_case': ref / step_s if ref else None, 'result': 'ok'})


# -------------------------------------------------------------------- mfu, longest


def _config(layers, dim, heads, length, batch, remat='none'):
  c = config_lib.base_config('rope')
  c.seq_len, c.batch_size, c.eval_lengths = length, batch, (length,)
  c.model.update(num_layers=layers, model_dim=dim, num_heads=heads, mlp_dim=4 * dim,
                 max_len=length, dtype='bfloat16', attention='auto', remat=remat)
  return c


def _train_steps(config, steps, profile_dir=None):
  """(compile seconds, seconds per step, parameters) of the real train step."""
  trainer = Trainer(config)
  state = trainer.init_state()
  one = {k: np.asarray(v) for k, v in trainer.task.dummy_batch(config.seq_len).items()}
  one['inputs'] = one['targets'] = np.random.default_rng(0).integers(
      4, 256, (1, config.seq_len)).astype(np.int32)
  batch = trainer.global_batch({k: np.repeat(v, config.batch_size, 0) for k, v in one.items()})
  with trainer._context():
    t = time.perf_counter()
    compiled = trainer._train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(steps):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - t) / steps
    if profile_dir:
      with jax.profiler.trace(profile_dir):
        for _ in range(FLAGS.profile_steps):
          state, _ = compiled(state, batch)
        jax.block_until_ready(state)
  return compile_s, step_s, sum(x.size for x in jax.tree.leaves(state['params']))


def mfu(budget: Budget):
  table = Table('mfu', 'Train step of the ~350M decoder, bf16, L = 2048 (compile apart).')
  layers, dim, heads, length = (2, 128, 2, 256) if FLAGS.smoke else (24, 1024, 16, 2048)
  for i, batch in enumerate(int(b) for b in FLAGS.mfu_batches):
    row = {'model': f'{layers}x{dim}', 'length': length, 'batch': batch}
    if not budget.fits():
      table.add({**row, 'result': 'skipped (budget)'})
      continue
    profile = (os.path.join(FLAGS.out or '/tmp', 'profile')
               if FLAGS.profile_steps and i == 0 else None)
    try:
      compile_s, sec, params = budget.timed(
          _train_steps, _config(layers, dim, heads, length, batch),
          2 if FLAGS.smoke else FLAGS.mfu_steps, profile)
    except Exception as e:  # noqa: BLE001
      table.add({**row, 'result': _error(e)})
      continue
    n = params - 260 * dim  # Non-embedding (the embedding is tied).
    tokens = batch * length
    flops = (6 * n + 6 * layers * length * dim) * tokens / sec
    table.add({**row, 'params_M': params / 1e6, 'compile_s': compile_s, 'step_s': sec,
               'tokens_per_s': tokens / sec,
               'mfu': flops / (FLAGS.peak_tflops * 1e12 * jax.device_count()), 'result': 'ok'})


def longest(budget: Budget):
  table = Table('longest', 'Longest L for a 125M decoder, batch 1, full remat.')
  layers, dim, heads = (2, 64, 2) if FLAGS.smoke else (12, 768, 12)
  length, top = (256, 1024) if FLAGS.smoke else (8192, FLAGS.max_length)
  while length <= top:
    if not budget.fits():
      table.add({'length': length, 'result': 'skipped (budget)'})
      return
    try:
      compile_s, sec, _ = budget.timed(
          _train_steps, _config(layers, dim, heads, length, 1, remat='full'), 1)
    except (memory.ResourceError, jax.errors.JaxRuntimeError) as e:
      table.add({'length': length, 'result': _error(e)})
      return
    table.add({'length': length, 'compile_s': compile_s, 'step_s': sec, 'result': 'fits'})
    length *= 2


def main(argv):
  del argv
  if unknown := sorted(set(FLAGS.parts) - set(PARTS)):
    raise SystemExit(f'error: --parts: got {unknown[0]!r}; allowed: {", ".join(PARTS)}')
  if FLAGS.out:
    os.makedirs(FLAGS.out, exist_ok=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    command = ' '.join(sys.argv)
    with open(os.path.join(FLAGS.out, 'README.md'), 'w') as f:
      f.write(f'# gpu_benchmark\n\n{jax.devices()[0].device_kind} x{jax.device_count()}, '
              f'jax {jax.__version__}, {when}\n\n```\n{command}\n```\n')
  budget = Budget(FLAGS.budget_s)
  for part in (p for p in PARTS if p in FLAGS.parts):
    budget.longest = 0.0
    try:
      globals()[part](budget)
    except Exception as e:  # noqa: BLE001  (A part that breaks: one line, the next goes on.)
      print(f'{part}: {_error(e)}', flush=True)
  print(f'# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, '
        f'{FLAGS.budget_s - budget.left():.0f} s of --budget_s={FLAGS.budget_s:.0f}', flush=True)


if __name__ == '__main__':
  ab.run(main)  # app.run, with --help exiting 0.
