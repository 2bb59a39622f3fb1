"""Length generalisation: Delétang et al. 2023 / Ruoss et al. 2023.

  python experiments/length_generalization.py --workdir=/tmp/lg --scale=local
  python experiments/length_generalization.py --workdir=/shared/lg --scale=paper \
      --config.data.data_dir=$DATA --launcher=slurm

Every synthetic task of ``posjax.data.synthetic`` x encodings x {ordinary,
randomized positions} (``configs/synthetic.py``): trained on lengths 1..N, tested
on N+1..10N. The report gives, per (task, encoding, randomized), the mean
out-of-distribution sequence accuracy over the test lengths (and, per run, over
N+1..2N alone) beside the in-distribution accuracy, and flags a run that did not learn the task in
distribution (sequence accuracy on held-in examples of the training lengths 1..N
below ``LEARNED``): its out-of-distribution numbers say nothing about extrapolation.

Scales (posjax's choices):
  local: the ``small`` datasets (N=20, built into DIR/tfds automatically), rope,
         alibi and the 2024-25 methods (NEW), 2 layers x 64 dims, 4000 steps of
         batch 8 (packed rows of 128), peak rate 1e-3: about 5 minutes a run on 2
         CPU cores.
  paper: the ``full`` datasets (N=40, test to 400; build them first, the suite says
         how), Ruoss et al.'s encodings (none, sinusoidal, transformer_xl, rope,
         alibi) and NEW, configs/synthetic.py's model and 100k steps.
An encoding that does not read positions (``reads_positions``: none, cope, fox, path; and
stick-breaking with none) gets no randomized variant: it would compute the same.
"""
import os
import statistics
import sys

if __name__ == '__main__':  # This checkout's posjax and configs/, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posjax import encodings
from posjax.analysis import charts
from posjax.data import synthetic
from posjax.suites import runner
from posjax.suites import report as report_lib
from posjax.tasks import sequence

NAME = 'length_generalization'
DESCRIPTION = ('Deletang et al. 2023 / Ruoss et al. 2023: synthetic tasks x encodings x '
               '{ordinary, randomized positions}, trained on lengths 1..N and tested up to '
               '10N; mean out-of-distribution sequence accuracy. Ruoss et al. report +12.0% '
               'mean OOD accuracy from randomized positions.')
LEARNED = 0.9  # In-distribution sequence accuracy below this: the task was not learned.
# The 2024-25 methods: FoX, PaTH, PoPE, DAPE (over ALiBi), Sandwich, DynamicPositionBias,
# and stick-breaking attention with no encoding (as Tan et al. 2025 run it).
NEW = ('fox', 'path', 'pope', 'dape', 'sandwich', 'dynamic_position_bias', 'stick_breaking')
# Variants that are not an encoding's name: name -> (posenc, overrides).
VARIANTS = {'stick_breaking': ('none', {'model.normalizer': 'stick_breaking'})}
SCALES = {
    'local': dict(size='small', runlocal=True, encodings=('rope', 'alibi') + NEW, overrides={
        'data.data_dir': '{suite_dir}/tfds', 'data.size': 'small', 'num_train_steps': 4_000,
        'warmup_steps': 100, 'batch_size': 8, 'eval_batch_size': 16, 'num_eval_batches': 1,
        'eval_every_steps': 4_000, 'checkpoint_every_steps': 1_000, 'log_every_steps': 200}),
    'paper': dict(size='full', runlocal=False,
                  encodings=('none', 'sinusoidal', 'transformer_xl', 'rope', 'alibi') + NEW,
                  overrides={}),
}


def run_name(task: str, posenc: str, randomized: bool) -> str:
  return f'{task}-{posenc}' + ('-randomized' if randomized else '')


def runs(scale: str) -> list[runner.Run]:
  s = SCALES[scale]
  out = []
  for task in synthetic.TASKS:
    for name in s['encodings']:
      posenc, extra = VARIANTS.get(name, (name, {}))
      for randomized in (False, True)[:1 + encodings.get(posenc).reads_positions]:
        arg = f'task={task},posenc={posenc},randomized={randomized},size={s["size"]}'
        out.append(runner.Run(run_name(task, name, randomized), 'configs/synthetic.py',
                              arg + (',runlocal' if s['runlocal'] else ''),
                              {**s['overrides'], **extra}))
  return out


def _missing(data_dir: str, size: str) -> list[str]:
  return [t for t in synthetic.TASKS if not os.path.isdir(os.path.join(data_dir, t, size))]


def requirements(scale: str, overrides: dict, selected=()) -> list[str]:
  """Paper scale: the ``full`` datasets must be built into --config.data.data_dir."""
  if scale == 'local':
    return []
  data_dir = os.path.expanduser(overrides.get('data.data_dir', ''))
  if not data_dir:
    return [f'python -m posjax.data.build {t} --data_dir=DATA --size=full'
            for t in synthetic.TASKS] + ['then pass --config.data.data_dir=DATA']
  return [f'python -m posjax.data.build {t} --data_dir={data_dir} --size=full'
          for t in _missing(data_dir, 'full')]


def prepare(suite_dir: str, scale: str, overrides: dict) -> None:
  """Local scale: builds the ``small`` datasets into DIR/tfds (reused when built)."""
  if scale != 'local' or 'data.data_dir' in overrides:
    return
  from posjax.data import builders
  size = overrides.get('data.size', SCALES['local']['size'])
  for task in _missing(os.path.join(suite_dir, 'tfds'), size):
    print(f'building {task}/{size} into {suite_dir}/tfds', flush=True)
    builders.build(task, data_dir=os.path.join(suite_dir, 'tfds'), size=size)


def _key(r):
  """(task, encoding or variant, randomized) of a run, from its name."""
  task = next((t for t in synthetic.TASKS if r.name.startswith(t + '-')), r.name)
  rest = r.name[len(task) + 1:]
  return task, rest.removesuffix('-randomized'), rest.endswith('-randomized')


def ood(r, near: bool = False):
  """Mean sequence accuracy over the test lengths N+1..10N; ``near``: over N+1..2N
  alone (N: the longest training length, one below the shortest test length), where
  an encoding that extrapolates a little shows it before the mean washes it out."""
  acc = report_lib.metric_by_suffix(r, 'eval/sequence_accuracy@')
  acc = {n: v for n, v in acc.items() if isinstance(n, int)}  # The test lengths.
  if near and acc:
    acc = {n: v for n, v in acc.items() if n <= 2 * (min(acc) - 1)}
  return statistics.fmean(acc.values()) if acc else None


def in_distribution(r):
  return r.final.get(f'eval/sequence_accuracy@{sequence.IN_DISTRIBUTION}')


def report(suite_dir: str, records) -> str:
  col = lambda r: f'{_key(r)[1]}{" +rand" if _key(r)[2] else ""}'
  mean = report_lib.pivot(records, row=lambda r: _key(r)[0], col=col, value=ood)
  per_run = report_lib.pivot(records, row=lambda r: r.name, value=lambda r: {
      'in-distribution': in_distribution(r), 'OOD mean': ood(r), 'N+1..2N': ood(r, near=True),
      'learned': 'yes' if (in_distribution(r) or 0) >= LEARNED else 'NO'})
  report_lib.write_csv(os.path.join(suite_dir, 'results.csv'),
                       {'ood_mean': mean, 'per_run': per_run})
  charts.plot_heatmap(mean, title='Mean OOD sequence accuracy', vmin=0, vmax=1,
                          path=os.path.join(suite_dir, 'ood_accuracy.png'))
  gains = _randomized_gain(records)
  parts = [report_lib.to_markdown(mean, title='Mean out-of-distribution sequence accuracy'),
           '![OOD accuracy](ood_accuracy.png)\n',
           report_lib.to_markdown(per_run, title=f'Per run (learned: in-distribution sequence '
                                                 f'accuracy >= {LEARNED})'),
           'Mean OOD gain of randomized positions over ordinary ones (runs that learned '
           f'the task, both variants): {gains}; Ruoss et al. 2023: +12.0%.\n']
  return '\n'.join(parts)


def _randomized_gain(records) -> str:
  by_key = {_key(r): r for r in records if r.status == 'finished'}
  diffs = [ood(r) - ood(by_key[k[:2] + (False,)]) for k, r in by_key.items()
           if k[2] and k[:2] + (False,) in by_key
           and all((in_distribution(x) or 0) >= LEARNED for x in (r, by_key[k[:2] + (False,)]))
           and ood(r) is not None and ood(by_key[k[:2] + (False,)]) is not None]
  return f'{100 * statistics.fmean(diffs):+.1f}% over {len(diffs)} pairs' if diffs else 'n/a'


if __name__ == '__main__':
  runner.run_suite(sys.modules[__name__])
