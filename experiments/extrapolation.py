"""Extrapolation: Press et al. 2022 (ALiBi), Figure 1 / Table 2 style.

  python experiments/extrapolation.py --workdir=/tmp/ext --scale=local   # ~15 min, 2 CPU cores
  python experiments/extrapolation.py --workdir=/shared/ext --scale=paper --launcher=slurm

Byte-level language models (``configs/lm.py``), one per registered encoding, are
trained at length L and evaluated at L, 2L, 4L, 8L, 16L (and 32L at paper scale);
the report gives perplexity and bits per byte by evaluation length and plots
perplexity against length (log x). ``learned`` gets a table that covers every
evaluation length (it is marked so: it was never trained past L).

Scales (posjax's choices where the paper's setting does not apply to bytes):
  local: L=64, 2 layers, 4 heads, 128 dims, batch 16, 300 steps, AdamW peak 1e-3,
         eval at 64..1024 on the same 16 windows of 1024 bytes
         (cut into 1024/n rows at length n: every length scores the same bytes).
  paper: the paper's WikiText-103 model (16 layers, 8 heads, 1024 dims, MLP 4096)
         at L=512, 50k steps of 64 x 512 bytes, eval 512..16384 (blockwise attention).
Any corpus: ``--config.data.path='~/corpus/*.txt'`` (passed to every run).
"""
import os
import sys

if __name__ == '__main__':  # This checkout's posjax and configs/, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posjax import encodings
from posjax.analysis import charts
from posjax.suites import runner
from posjax.suites import report as report_lib

NAME = 'extrapolation'
DESCRIPTION = ('Press et al. 2022 (ALiBi), Table 2 / Figure 1 style: language models trained '
               'at length L and evaluated at L, 2L, 4L, 8L, 16L (32L at paper scale), one per '
               'encoding; perplexity and bits per byte.')
LEARNED_NOTE = 'table covers the evaluation lengths'
# Press et al. 2022, WikiText-103, L=512: perplexity at 512 / 1012 / 2512 tokens.
PAPER = {'sinusoidal': (20.05, 43.54, 132.41), 'rope': (20.07, 21.37, 31.58),
         't5': (19.65, 18.79, 20.41), 'alibi': (19.73, 18.73, 18.41)}

SCALES = {
    'local': dict(arg='runlocal', seq_len=64, factors=(1, 2, 4, 8, 16), overrides={
        'num_train_steps': 300, 'warmup_steps': 20, 'batch_size': 16,
        'eval_every_steps': 300, 'checkpoint_every_steps': 300, 'log_every_steps': 50,
        'eval_batch_size': 8, 'num_eval_batches': 2}),
    'paper': dict(arg='size=base', seq_len=512, factors=(1, 2, 4, 8, 16, 32), overrides={
        'model.num_layers': 16, 'model.num_heads': 8, 'model.model_dim': 1024,
        'model.mlp_dim': 4096, 'model.attention': 'blockwise', 'model.block_size': 512,
        'num_train_steps': 50_000, 'warmup_steps': 2_000, 'batch_size': 64,
        'learning_rate': 3e-4, 'eval_every_steps': 5_000, 'checkpoint_every_steps': 1_000,
        'eval_batch_size': 8, 'num_eval_batches': 4}),
}


# Beyond one run per encoding: recent models' per-layer schedules (configs/lm.py
# arch presets, windows / chunks of L/4, 4 or 6 layers), their controls (RoPE with
# the same window alone; RoPE at 4 layers) and options: name -> (config argument,
# overrides) for training length L. p-RoPE keeps the highest 75 % of RoPE's
# frequencies (Barbero et al. 2025); ssmax is Scalable-Softmax (Nakanishi 2025); ALiBi
# on 2 heads only, the others unbiased (x-transformers' ``alibi_num_heads``);
# stick-breaking attention with no encoding, as Tan et al. 2025 run it.
def extra_runs(L: int) -> dict:
  return {
      'arch-irope': (f'arch=irope,window={L // 4}', {}),
      'arch-gemma3': (f'arch=gemma3,window={L // 4}', {}),
      'arch-command_a': (f'arch=command_a,window={L // 4}', {}),
      'arch-swan': (f'arch=swan,window={L // 4}', {}),
      'rope-window': ('posenc=rope', {'model.window': L // 4}),
      'rope-4layers': ('posenc=rope', {'model.num_layers': 4}),
      'rope-p0.75': ('posenc=rope', {'model.posenc_args.scaling.type': 'proportional',
                                     'model.posenc_args.scaling.fraction': 0.75}),
      'rope-ssmax': ('posenc=rope', {'model.temperature': 'ssmax'}),
      'alibi-2heads': ('posenc=alibi', {'model.posenc_args.num_alibi_heads': 2}),
      'stick_breaking': ('posenc=none', {'model.normalizer': 'stick_breaking'}),
  }


def _trained_distances(name: str, L: int) -> dict:
  """A bucketed bias whose ``max_distance`` exceeds the training length L has buckets
  that training never reaches (T5 at local scale: L = 64, default 128); they keep
  their init and lift the bias at long lengths. Such encodings get max_distance = L,
  as at the paper's L = 512 >= 128 every bucket is trained."""
  default = getattr(encodings.get(name), 'max_distance', None)
  return {'model.posenc_args.max_distance': L} if isinstance(default, int) and default > L else {}


def runs(scale: str) -> list[runner.Run]:
  s = SCALES[scale]
  lengths = tuple(s['seq_len'] * f for f in s['factors'])
  base = {**s['overrides'], 'seq_len': s['seq_len'], 'eval_lengths': lengths}
  out = []
  for name in encodings.names():
    bounded = encodings.get(name).bounded_by_max_len
    overrides = {**base, 'model.max_len': max(lengths) if bounded else s['seq_len'],
                 **_trained_distances(name, s['seq_len'])}
    out.append(runner.Run(name=name, config='configs/lm.py',
                               arg=f'posenc={name},{s["arg"]}', overrides=overrides,
                               note=LEARNED_NOTE if bounded else ''))
  for name, (arg, extra) in extra_runs(s['seq_len']).items():
    out.append(runner.Run(name=name, config='configs/lm.py', arg=f'{arg},{s["arg"]}',
                          overrides={**base, 'model.max_len': s['seq_len'], **extra}))
  return out


def _label(record) -> str:
  bounded = {n for n in encodings.names() if encodings.get(n).bounded_by_max_len}
  return f'{record.name} ({LEARNED_NOTE})' if record.name in bounded else record.name


def _perplexity(record) -> dict:
  return report_lib.metric_by_suffix(record, 'eval/perplexity@')


def _ratio(record):
  ppl = _perplexity(record)
  return ppl[max(ppl)] / ppl[min(ppl)] if ppl else None


def report_tables(records) -> dict[str, report_lib.Table]:
  bpb = lambda r: report_lib.metric_by_suffix(r, 'eval/bits_per_byte@')
  return {'perplexity': report_lib.pivot(records, row=_label, value=_perplexity),
          'bits_per_byte': report_lib.pivot(records, row=_label, value=bpb),
          'longest_over_training': report_lib.pivot(records, row=_label, value=_ratio)}


def paper_table() -> str:
  rows = ['| encoding | 512 | 1012 | 2512 |', '|---|---:|---:|---:|']
  rows += [f'| {k} | ' + ' | '.join(f'{v:.2f}' for v in vals) + ' |'
           for k, vals in PAPER.items()]
  return '\n'.join(rows) + '\n'


def report(suite_dir: str, records) -> str:
  tables = report_tables(records)
  report_lib.write_csv(os.path.join(suite_dir, 'results.csv'), tables)
  series = report_lib.series(records, _perplexity, label=_label)
  charts.plot_lines(series, xlabel='evaluation length (bytes)', ylabel='perplexity',
                        title='Perplexity by evaluation length', logx=True,
                        logy=any(series.values()),
                        marks={k: 'o--' for k in series if LEARNED_NOTE in k},
                        path=os.path.join(suite_dir, 'perplexity.png'))
  md = report_lib.to_markdown
  parts = [md(tables['perplexity'], title='Perplexity by evaluation length'),
           md(tables['bits_per_byte'], fmt='{:.3f}', title='Bits per byte by evaluation length'),
           md(tables['longest_over_training'],
              title='Perplexity at the longest length / at the training length'),
           '![perplexity](perplexity.png)\n',
           '### Paper (Press et al. 2022, Table 2; WikiText-103, word level, L=512)\n\n'
           + paper_table()]
  if any(r.status != 'finished' for r in records):
    parts.append(md(report_lib.status_table(records), title='Runs not finished'))
  return '\n'.join(parts)


if __name__ == '__main__':
  runner.run_suite(sys.modules[__name__])
