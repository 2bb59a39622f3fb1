"""Attention benchmark: time and peak memory of forward + backward per implementation.

  python experiments/attention_benchmark.py                     # the README table
  python experiments/attention_benchmark.py --lengths=1024,4096 --posencs=rope,alibi \
      --attentions=blockwise,flash --repeats=3 --csv=/tmp/bench.csv

One decoder layer (model_dim 128, 4 heads of 32, batch 1, float32 unless
``--dtype``), ``jax.value_and_grad`` of a weighted sum of its logits with respect to
every parameter, compiled once per (encoding, implementation, length); the time is
the median of ``--repeats`` runs after one warm-up run. Memory is XLA's own
account of the compiled program (``memory_analysis()``: arguments + outputs +
temporaries), which on CPU is what the run allocates at its peak.

``matmul`` is the reference every implementation is measured against: the
attention's matrix multiplications alone (QK^T and PV forward, and the four of
their gradients: dO V^T, dS K, dO^T P, dS^T Q), on each ``--block_size`` tile of
the causal lower triangle only, for the same shapes, written out in the layouts
in which XLA's CPU dots transpose no tile.
``dense`` is left out (``skip``) above ``--dense_max`` tokens, and any cell whose
compiled peak exceeds ``--max_gb`` (default: 80% of this machine's memory) is not
run: its time reads ``skip``, its memory is XLA's estimate.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

if __name__ == '__main__':  # This checkout's posjax, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from posjax import models  # noqa: E402

flags.DEFINE_list('lengths', ['1024', '4096', '8192', '16384'], 'Sequence lengths.')
flags.DEFINE_list('posencs', ['none', 'rope', 'alibi', 't5', 'kerple_log', 'fire'],
                  'Encodings (posjax.encodings names).')
flags.DEFINE_list('attentions', ['dense', 'blockwise', 'flash'], 'model.attention values.')
flags.DEFINE_integer('block_size', 512, 'model.block_size (blockwise and flash).')
flags.DEFINE_integer('dense_max', 8192, 'Longest length at which dense runs.')
flags.DEFINE_integer('repeats', 3, 'Timed runs per cell (median).')
_RAM_GB = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30
flags.DEFINE_float('max_gb', 0.8 * _RAM_GB,
                   'A cell whose compiled peak exceeds this is not run (time: skip).')
flags.DEFINE_string('dtype', 'float32', 'model.dtype.')
flags.DEFINE_integer('window', 0, 'model.window (sliding window; 0: none) for every cell.')
flags.DEFINE_string('normalizer', 'softmax', 'model.normalizer (softmax, stick_breaking).')
flags.DEFINE_string('csv', '', 'Also write the rows to this CSV file.')
FLAGS = flags.FLAGS

DIM, HEADS, VOCAB = 128, 4, 256


def _time(fn, *args) -> tuple[float | None, float]:
  """(median seconds, peak bytes) of a compiled ``fn(*args)``; seconds None (not
  run) when the peak exceeds ``--max_gb``."""
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          if mem is not None else float('nan'))
  if peak > FLAGS.max_gb * 2 ** 30:
    return None, peak
  return median_time(compiled, *args), peak


def median_time(compiled, *args) -> float:
  """Median seconds of ``--repeats`` runs of ``compiled(*args)`` after a warm-up."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(FLAGS.repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def layer_step(posenc: str, attention: str, length: int, block_size=None):
  """``(loss_and_grads, params, batch)`` of one decoder layer at this length
  (``block_size``: default ``--block_size``; 'auto' the model's own choice)."""
  cfg = models.ModelConfig.from_config(dict(
      kind='decoder', vocab_size=VOCAB, num_layers=1, num_heads=HEADS, model_dim=DIM,
      mlp_dim=4 * DIM, max_len=length, posenc=posenc, attention=attention,
      block_size=block_size or FLAGS.block_size, dtype=FLAGS.dtype, window=FLAGS.window,
      normalizer=FLAGS.normalizer))
  model = models.build(cfg)
  tokens = jax.random.randint(jax.random.key(0), (1, length), 0, VOCAB)
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  seg = jnp.ones((1, length), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(1), tokens, pos, seg)['params']
  w = jax.random.normal(jax.random.key(2), (1, length, VOCAB))

  def loss_and_grads(params, tokens):
    loss = lambda p: (model.apply({'params': p}, tokens, pos, seg) * w).sum()  # noqa: E731
    return jax.value_and_grad(loss)(params)
  return loss_and_grads, params, tokens


def causal_matmuls(length: int, tile: int):
  """QK^T and PV and the four matmuls of their gradients on each ``tile`` x
  ``tile`` tile of the causal lower triangle, written out (no softmax, no mask)
  in the layouts in which XLA's CPU dots transpose no tile: the work any tiled
  implementation must do, at its best."""
  K = DIM // HEADS
  n = -(-length // tile)
  qkv = jax.random.normal(jax.random.key(3), (4, HEADS, n * tile, K), jnp.dtype(FLAGS.dtype))
  pairs = jnp.asarray([(i, j) for i in range(n) for j in range(i + 1)], jnp.int32)

  def f(qkv):
    q, k, v, do = qkv
    at = lambda x, i, axis=1: jax.lax.dynamic_slice_in_dim(x, i * tile, tile, axis)  # noqa: E731
    def add(x, i, d, axis):
      return jax.lax.dynamic_update_slice_in_dim(x, at(x, i, axis) + d, i * tile, axis)

    def pair(acc, ij):
      o, dq, dk, dv = acc
      i, j = ij
      qi, doi, kj, vj = at(q, i), at(do, i), at(k, j), at(v, j)
      s = jnp.einsum('hlk,hsk->hls', qi, kj)  # S = Q K^T
      ds = jnp.einsum('hlk,hsk->hls', doi, vj)  # dP = dO V^T (here dS = dP)
      o = add(o, i, jnp.einsum('hls,hsk->hlk', s, vj), 1)  # O = S V
      dq = add(dq, i, jnp.einsum('hls,hsk->hlk', ds, kj), 1)  # dQ = dS K
      dv = add(dv, j, jnp.einsum('hlk,hls->hks', doi, s), 2)  # dV^T = dO^T S
      dk = add(dk, j, jnp.einsum('hlk,hls->hks', qi, ds), 2)  # dK^T = Q^T dS
      return (o, dq, dk, dv), None

    zeros = jnp.zeros_like(q)
    init = (zeros, zeros, jnp.swapaxes(zeros, 1, 2), jnp.swapaxes(zeros, 1, 2))
    return jax.lax.scan(pair, init, pairs)[0]
  return f, qkv


def rows():
  for length in map(int, FLAGS.lengths):
    fn, qkv = causal_matmuls(length, FLAGS.block_size)
    matmul, _ = _time(fn, qkv)
    for posenc in FLAGS.posencs:
      row = {'length': length, 'posenc': posenc, 'matmul_s': matmul}
      for attention in FLAGS.attentions:
        if attention == 'dense' and length > FLAGS.dense_max:
          row[f'{attention}_s'] = row[f'{attention}_gb'] = None
          continue
        sec, peak = _time(*layer_step(posenc, attention, length))
        row[f'{attention}_s'], row[f'{attention}_gb'] = sec, peak / 2 ** 30
      yield row


def _fmt(v) -> str:
  return 'skip' if v is None else f'{v:.3g}'


def main(argv):
  del argv
  header = None
  for row in rows():  # Each row printed (and written) as soon as it is measured.
    if header is None:
      header = list(row)
      print('| ' + ' | '.join(header) + ' |')
      print('|' + '---|' * len(header))
      if FLAGS.csv:
        with open(FLAGS.csv, 'w') as f:
          f.write(','.join(header) + '\n')
    print('| ' + ' | '.join(_fmt(row[h]) if h not in ('length', 'posenc') else str(row[h])
                            for h in header) + ' |', flush=True)
    if FLAGS.csv:
      with open(FLAGS.csv, 'a') as f:
        f.write(','.join('' if row[h] is None else str(row[h]) for h in header) + '\n')
  print(f'# {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, '
        f'block_size {FLAGS.block_size}, dtype {FLAGS.dtype}', flush=True)


HELP_FLAGS = ('--help', '-help', '-h', '--helpshort', '-?', '--helpfull')


def run(main_fn) -> None:
  """``app.run(main_fn)``, but ``--help`` exits 0 (absl's exits 1)."""
  help_flags = [a for a in sys.argv[1:] if a.partition('=')[0] in HELP_FLAGS]
  if help_flags:
    app.usage(shorthelp='--helpfull' not in help_flags, writeto_stdout=True, exitcode=0)
  app.run(main_fn)


if __name__ == '__main__':
  run(main)
