"""RoPE scaling: a RoPE model trained at L, extended to 4L and 8L by every scaling.

  python experiments/rope_scaling.py --workdir=/tmp/rs --scale=local
  python experiments/rope_scaling.py --workdir=/shared/rs --scale=paper --launcher=slurm

One byte-level RoPE language model (``configs/lm.py``, run ``rope``) is trained at
length L. For each scaling of ``posjax.encodings.rope_inv_freq`` (linear = position
interpolation, Chen et al. 2023; ntk; dynamic; yarn, Peng et al. 2023; llama3;
longrope; and YaRN as gpt-oss and DeepSeek-V3 ship it: ``yarn_fractional``, the
correction range not rounded, ``yarn_mscale_all_dim``, mscale = mscale_all_dim) and
factor 4 and 8 there are two runs:
  <type>-<f>x-zeroshot   the trained params evaluated with the scaling
                         (``posjax.evaluate``, no training);
  <type>-<f>x-finetune   a short fine-tune at length f*L from those params
                         (``config.init_from``), as in the PI and YaRN papers.
Each is evaluated at L, 2L, 4L and 8L; the report gives perplexity by length.
``rope-p0.75`` is a second base model trained with p-RoPE (Barbero et al. 2025: the
lowest quarter of the frequencies set to zero), evaluated at the same lengths.
``longrope`` uses uniform factors (1 below the original length, f above): LongRoPE's
per-frequency factors come from its search, which posjax does not run.

Scales (posjax's choices):
  local: the extrapolation suite's local model (L=64, 2 layers, 128 dims, 300 steps);
         fine-tunes of 50 steps at peak rate 3e-4.
  paper: the extrapolation suite's paper model (L=512, 16 layers, 1024 dims, 50k
         steps); fine-tunes of 1000 steps at 2e-5 (PI fine-tunes for 1000 steps).
Every run is also scored on passkey retrieval (``posjax.data.passkey``: a 5-digit key
hidden at depths 0..1 of filler text, exact-match accuracy) at the evaluation lengths
of at least ``PASSKEY_MIN`` bytes: a depth x length heat map per run
(``passkey/<run>.png``) and a table of the mean over depths.
"""
import os
import sys

if __name__ == '__main__':  # This checkout's posjax and configs/, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posjax.analysis import charts
from posjax.data import passkey
from posjax.encodings import rope_scaling
from posjax.suites import runner
from posjax.suites import report as report_lib

NAME = 'rope_scaling'
DESCRIPTION = ('Position interpolation (Chen et al. 2023) and YaRN (Peng et al. 2023) style: '
               'a RoPE model trained at L, extended to 4L and 8L by each RoPE scaling, '
               'zero-shot and after a short fine-tune at the long length; perplexity by length.')
FACTORS = (4, 8)
PASSKEY_MIN = 128  # Bytes: the needle, question and answer take about 105.
SCALES = {
    'local': dict(arg='posenc=rope,runlocal', seq_len=64, head_dim=32, overrides={
        'num_train_steps': 300, 'warmup_steps': 20, 'batch_size': 16,
        'eval_every_steps': 300, 'checkpoint_every_steps': 300, 'log_every_steps': 50,
        'eval_batch_size': 8, 'num_eval_batches': 2},
        finetune={'num_train_steps': 50, 'warmup_steps': 5, 'learning_rate': 3e-4,
                  'eval_every_steps': 50, 'checkpoint_every_steps': 50, 'batch_size': 8}),
    'paper': dict(arg='posenc=rope,size=base', seq_len=512, head_dim=128, overrides={
        'model.num_layers': 16, 'model.num_heads': 8, 'model.model_dim': 1024,
        'model.mlp_dim': 4096, 'model.attention': 'blockwise', 'model.block_size': 512,
        'num_train_steps': 50_000, 'warmup_steps': 2_000, 'batch_size': 64,
        'learning_rate': 3e-4, 'eval_every_steps': 5_000, 'checkpoint_every_steps': 1_000,
        'eval_batch_size': 8, 'num_eval_batches': 4},
        finetune={'num_train_steps': 1_000, 'warmup_steps': 20, 'learning_rate': 2e-5,
                  'eval_every_steps': 500, 'checkpoint_every_steps': 500, 'batch_size': 8}),
}


# YaRN as shipped (Hugging Face's keys): gpt-oss keeps the correction range
# fractional (truncate False); DeepSeek-V3 sets mscale = mscale_all_dim (attention
# factor 1: its attention applies mscale^2 itself). variant -> (type, extra keys).
VARIANTS = {'yarn_fractional': ('yarn', {'truncate': False}),
            'yarn_mscale_all_dim': ('yarn', {'mscale': 1.0, 'mscale_all_dim': 1.0})}
# p-RoPE (Barbero et al. 2025) is trained with it, not applied to a trained RoPE:
# a base run of its own, evaluated at every length.
P_ROPE = {'model.posenc_args.scaling.type': 'proportional',
          'model.posenc_args.scaling.fraction': 0.75}


def scaling(kind: str, factor: int, seq_len: int, head_dim: int, **extra) -> dict:
  """``model.posenc_args.scaling.*`` overrides of one scaling type."""
  s = {'type': kind, **extra}
  if kind == 'longrope':
    half = head_dim // 2
    s.update(short_factor=(1.0,) * half, long_factor=(float(factor),) * half,
             factor=float(factor), original_max_position=seq_len)
  else:
    s['factor'] = float(factor)
    if kind in ('dynamic', 'yarn', 'llama3'):
      s['original_max_position'] = seq_len
  return {f'model.posenc_args.scaling.{k}': v for k, v in s.items()}


def runs(scale: str) -> list[runner.Run]:
  s = SCALES[scale]
  lengths = tuple(s['seq_len'] * f for f in (1, 2, 4, 8))
  base = {**s['overrides'], 'seq_len': s['seq_len'], 'model.max_len': s['seq_len'],
          'eval_lengths': lengths,
          'passkey_lengths': tuple(n for n in lengths if n >= PASSKEY_MIN)}
  out = [runner.Run('rope', 'configs/lm.py', s['arg'], base, note='no scaling'),
         runner.Run('rope-p0.75', 'configs/lm.py', s['arg'], {**base, **P_ROPE},
                    note='p-RoPE, trained so')]
  kinds = {k: (k, {}) for k in rope_scaling.EXTENSION_TYPES} | VARIANTS
  for kind, (type_, extra) in kinds.items():
    for f in FACTORS:
      sc = scaling(type_, f, s['seq_len'], s['head_dim'], **extra)
      out.append(runner.Run(f'{kind}-{f}x-zeroshot', 'configs/lm.py', s['arg'],
                                 {**base, **sc}, base='rope', evaluate=True))
      long = {'seq_len': f * s['seq_len'], 'model.max_len': f * s['seq_len']}
      out.append(runner.Run(f'{kind}-{f}x-finetune', 'configs/lm.py', s['arg'],
                                 {**base, **sc, **s['finetune'], **long}, base='rope'))
  return out


def _perplexity(record) -> dict:
  """By evaluation length (the passkey sets' perplexities are left out)."""
  return {n: v for n, v in report_lib.metric_by_suffix(record, 'eval/perplexity@').items()
          if isinstance(n, int)}


def _passkey(record) -> dict[tuple[float, int], float]:
  """``{(depth, length): accuracy}`` from ``eval/sequence_accuracy@passkey_<n>_<d>``."""
  out = {}
  for key, v in report_lib.metric_by_suffix(record, 'eval/sequence_accuracy@passkey_').items():
    length, depth = str(key).split('_')
    out[int(depth) / 100, int(length)] = v
  return out


def _passkey_mean(record) -> dict[int, float]:
  by_length = {}
  for (_, n), v in _passkey(record).items():
    by_length.setdefault(n, []).append(v)
  return {n: sum(vs) / len(vs) for n, vs in sorted(by_length.items())}


def _passkey_maps(suite_dir: str, records) -> None:
  """A depth x length heat map per finished run with passkey results."""
  for r in records:
    grid = _passkey(r) if r.status == 'finished' else {}
    if grid:
      depths, lengths = sorted({d for d, _ in grid}), sorted({n for _, n in grid})
      table = report_lib.Table(depths, lengths, dict(grid))
      charts.plot_heatmap(table, title=f'{r.name}: passkey accuracy (depth x length)',
                              vmin=0, vmax=1,
                              path=os.path.join(suite_dir, 'passkey', f'{r.name}.png'))


def report(suite_dir: str, records) -> str:
  table = report_lib.pivot(records, row=lambda r: r.name, value=_perplexity)
  keys = report_lib.pivot(records, row=lambda r: r.name, value=_passkey_mean)
  report_lib.write_csv(os.path.join(suite_dir, 'results.csv'),
                       {'perplexity': table, 'passkey_mean_over_depths': keys})
  _passkey_maps(suite_dir, records)
  for mode in ('zeroshot', 'finetune'):
    chosen = [r for r in records if r.name in ('rope', 'rope-p0.75') or r.name.endswith(mode)]
    series = report_lib.series(chosen, _perplexity)
    charts.plot_lines(series, xlabel='evaluation length (bytes)', ylabel='perplexity',
                          title=f'RoPE scaling, {mode}', logx=True,
                          logy=any(series.values()),
                          path=os.path.join(suite_dir, f'perplexity_{mode}.png'))
  parts = [report_lib.to_markdown(table, title='Perplexity by evaluation length'),
           '![zero-shot](perplexity_zeroshot.png) ![fine-tuned](perplexity_finetune.png)\n',
           report_lib.to_markdown(keys, title='Passkey retrieval accuracy, mean over depths '
                                              f'{", ".join(map(str, passkey.DEPTHS))} '
                                              '(depth x length: passkey/<run>.png)')]
  if any(r.status != 'finished' for r in records):
    parts.append(report_lib.to_markdown(report_lib.status_table(records),
                                        title='Runs not finished'))
  return '\n'.join(parts)


if __name__ == '__main__':
  runner.run_suite(sys.modules[__name__])
