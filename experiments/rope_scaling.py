"""RoPE scaling: a RoPE model trained at L, extended to 4L and 8L by every scaling.

  python experiments/rope_scaling.py --workdir=/tmp/rs --scale=local
  python experiments/rope_scaling.py --workdir=/shared/rs --scale=paper --launcher=slurm

One byte-level RoPE language model (``configs/lm.py``, run ``rope``) is trained at
length L. For each scaling of ``posjax.encodings.rope_inv_freq`` (linear = position
interpolation, Chen et al. 2023; ntk; dynamic; yarn, Peng et al. 2023; llama3;
longrope) and factor 4 and 8 there are two runs:
  <type>-<f>x-zeroshot   the trained params evaluated with the scaling
                         (``posjax.evaluate``, no training);
  <type>-<f>x-finetune   a short fine-tune at length f*L from those params
                         (``config.init_from``), as in the PI and YaRN papers.
Each is evaluated at L, 2L, 4L and 8L; the report gives perplexity by length.
``longrope`` uses uniform factors (1 below the original length, f above): LongRoPE's
per-frequency factors come from its search, which posjax does not run.

Scales (posjax's choices):
  local: the extrapolation suite's local model (L=64, 2 layers, 128 dims, 300 steps);
         fine-tunes of 50 steps at peak rate 3e-4.
  paper: the extrapolation suite's paper model (L=512, 16 layers, 1024 dims, 50k
         steps); fine-tunes of 1000 steps at 2e-5 (PI fine-tunes for 1000 steps).
Passkey retrieval (a depth x length heat map) is not part of this suite yet: the
``passkey`` dataset is a sequence task over its own vocabulary, not a byte LM's.
"""
import os
import sys

from posjax import experiments
from posjax import report as report_lib
from posjax.encodings import rotary

NAME = 'rope_scaling'
DESCRIPTION = ('Position interpolation (Chen et al. 2023) and YaRN (Peng et al. 2023) style: '
               'a RoPE model trained at L, extended to 4L and 8L by each RoPE scaling, '
               'zero-shot and after a short fine-tune at the long length; perplexity by length.')
FACTORS = (4, 8)
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


def scaling(kind: str, factor: int, seq_len: int, head_dim: int) -> dict:
  """``model.posenc_args.scaling.*`` overrides of one scaling type."""
  s = {'type': kind}
  if kind == 'longrope':
    half = head_dim // 2
    s.update(short_factor=(1.0,) * half, long_factor=(float(factor),) * half,
             factor=float(factor), original_max_position=seq_len)
  else:
    s['factor'] = float(factor)
    if kind in ('dynamic', 'yarn', 'llama3'):
      s['original_max_position'] = seq_len
  return {f'model.posenc_args.scaling.{k}': v for k, v in s.items()}


def runs(scale: str) -> list[experiments.Run]:
  s = SCALES[scale]
  lengths = tuple(s['seq_len'] * f for f in (1, 2, 4, 8))
  base = {**s['overrides'], 'seq_len': s['seq_len'], 'model.max_len': s['seq_len'],
          'eval_lengths': lengths}
  out = [experiments.Run('rope', 'configs/lm.py', s['arg'], base, note='no scaling')]
  for kind in rotary.SCALING_TYPES:
    for f in FACTORS:
      sc = scaling(kind, f, s['seq_len'], s['head_dim'])
      out.append(experiments.Run(f'{kind}-{f}x-zeroshot', 'configs/lm.py', s['arg'],
                                 {**base, **sc}, base='rope', evaluate=True))
      long = {'seq_len': f * s['seq_len'], 'model.max_len': f * s['seq_len']}
      out.append(experiments.Run(f'{kind}-{f}x-finetune', 'configs/lm.py', s['arg'],
                                 {**base, **sc, **s['finetune'], **long}, base='rope'))
  return out


def _perplexity(record) -> dict:
  return report_lib.metric_by_suffix(record, 'eval/perplexity@')


def report(suite_dir: str, records) -> str:
  table = report_lib.pivot(records, row=lambda r: r.name, value=_perplexity)
  report_lib.write_csv(os.path.join(suite_dir, 'results.csv'), {'perplexity': table})
  for mode in ('zeroshot', 'finetune'):
    chosen = [r for r in records if r.name == 'rope' or r.name.endswith(mode)]
    series = report_lib.series(chosen, _perplexity)
    report_lib.plot_lines(series, xlabel='evaluation length (bytes)', ylabel='perplexity',
                          title=f'RoPE scaling, {mode}', logx=True,
                          logy=any(series.values()),
                          path=os.path.join(suite_dir, f'perplexity_{mode}.png'))
  parts = [report_lib.to_markdown(table, title='Perplexity by evaluation length'),
           '![zero-shot](perplexity_zeroshot.png) ![fine-tuned](perplexity_finetune.png)\n']
  if any(r.status != 'finished' for r in records):
    parts.append(report_lib.to_markdown(report_lib.status_table(records),
                                        title='Runs not finished'))
  return '\n'.join(parts)


if __name__ == '__main__':
  experiments.run_suite(sys.modules[__name__])
