"""Long Range Arena: Tay et al. 2021, Table 1, for a set of encodings.

  python experiments/lra.py --workdir=/tmp/lra --scale=local --config.data.data_dir=$DATA
  python experiments/lra.py --workdir=/shared/lra --scale=paper --config.data.data_dir=$DATA \
      --launcher=slurm

The five LRA tasks (``configs/lra_*.py``: ListOps, Text, Retrieval, Image,
Pathfinder-32) x ``ENCODINGS`` (rope_2d instead of rope on the image tasks). The
datasets live in ``--config.data.data_dir``; before any run the suite lists, one
line each, what must be built or downloaded there (at local scale the generated
ListOps and Pathfinder are built automatically). The runs evaluate on the test
split (the last checkpoint, no selection on it), and the report gives that accuracy
beside the paper's Transformer row.

Scales: local = each config's ``runlocal`` model (2 layers, 64 dims, length <= 128)
on the ``small`` datasets for 2000 steps of batch 16, tested on their whole test
split; paper = the LRA reference configs
(cited in each configs/lra_*.py) on the ``full`` datasets.
"""
import os
import sys

if __name__ == '__main__':  # This checkout's posjax and configs/, whatever posjax is installed.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posjax.suites import runner
from posjax.suites import report as report_lib

NAME = 'lra'
DESCRIPTION = ('Tay et al. 2021 (Long Range Arena), Table 1: accuracy on the five LRA tasks '
               'for a set of encodings, beside the paper\'s vanilla Transformer row.')
ENCODINGS = ('sinusoidal', 'learned', 'rope', 'alibi', 't5')
# task: (config, dataset, 2D task, paper Transformer accuracy, how to get the data).
TASKS = {
    'listops': ('configs/lra_listops.py', 'listops', False, 36.37, ''),
    'text': ('configs/lra_text.py', 'lra_text', False, 64.27,
             'https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz'),
    'retrieval': ('configs/lra_retrieval.py', 'lra_retrieval', False, 57.46,
                  'https://storage.googleapis.com/long-range-arena/lra_release.gz '
                  "(tar xzf lra_release.gz --wildcards '*new_aan_pairs*')"),
    'image': ('configs/lra_image.py', 'lra_image', True, 42.44,
              'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'),
    'pathfinder': ('configs/lra_pathfinder.py', 'pathfinder32', True, 71.40, ''),
}
SCALES = {
    # Local: the whole test split of the small builds (ListOps 500, Pathfinder 1000
    # examples), not runlocal's 16, so accuracies are good to a few points.
    'local': dict(arg=',runlocal', size='small', overrides={
        'num_train_steps': 2000, 'warmup_steps': 100, 'eval_every_steps': 1000,
        'checkpoint_every_steps': 1000, 'log_every_steps': 100, 'num_eval_batches': 64,
        'data.eval_split': 'test'}),
    # The paper's table is test accuracy; the runs select no checkpoint on it.
    'paper': dict(arg='', size='full', overrides={'data.eval_split': 'test'}),
}


def runs(scale: str) -> list[runner.Run]:
  s = SCALES[scale]
  out = []
  for task, (config, _, two_d, _, _) in TASKS.items():
    for posenc in ENCODINGS:
      posenc = 'rope_2d' if two_d and posenc == 'rope' else posenc
      out.append(runner.Run(f'{task}-{posenc}', config,
                                 f'posenc={posenc},size={s["size"]}{s["arg"]}',
                                 {**s['overrides'], 'data.size': s['size']}))
  return out


def _task(name: str) -> str:
  return name.split('-')[0]


def _built(data_dir: str, dataset: str, size: str) -> bool:
  return os.path.isdir(os.path.join(data_dir, dataset, size))


def requirements(scale: str, overrides: dict, selected=()) -> list[str]:
  """One line per dataset the selected runs need that is not in data.data_dir."""
  data_dir = os.path.expanduser(overrides.get('data.data_dir', ''))
  size = overrides.get('data.size', SCALES[scale]['size'])
  tasks = {_task(r.name) for r in selected} or set(TASKS)
  if not data_dir:
    return ['--config.data.data_dir=DATA: required (where the LRA datasets are built)']
  out = []
  for task in (t for t in TASKS if t in tasks):
    _, dataset, _, _, url = TASKS[task]
    if _built(data_dir, dataset, size) or (not url and scale == 'local'):
      continue  # Generated datasets are built by prepare() at local scale.
    get = f'download {url} into M, then ' if url else ''
    manual = ' --manual_dir=M' if url else ''
    out.append(f'{task}: {get}python -m posjax.data.build {dataset} --data_dir={data_dir} '
               f'--size={size}{manual}')
  return out


def prepare(suite_dir: str, scale: str, overrides: dict) -> None:
  """Local scale: builds the generated datasets (ListOps, Pathfinder) if missing."""
  data_dir = os.path.expanduser(overrides.get('data.data_dir', ''))
  size = overrides.get('data.size', SCALES[scale]['size'])
  if scale != 'local' or not data_dir:
    return
  from posjax.data import builders
  for _, dataset, _, _, url in TASKS.values():
    if not url and not _built(data_dir, dataset, size):
      print(f'building {dataset}/{size} into {data_dir}', flush=True)
      builders.build(dataset, data_dir=data_dir, size=size)


def accuracy(record):
  acc = report_lib.metric_by_suffix(record, 'eval/accuracy@')
  value = acc.get('test', acc.get('validation'))
  return None if value is None else 100 * value


def report(suite_dir: str, records) -> str:
  posenc = lambda r: r.name.split('-', 1)[1].replace('rope_2d', 'rope')
  table = report_lib.pivot(records, row=posenc, col=lambda r: _task(r.name), value=accuracy)
  table.row_labels.append('Transformer (Tay et al. 2021)')
  for task, spec in TASKS.items():
    table.cells['Transformer (Tay et al. 2021)', task] = spec[3]
  report_lib.write_csv(os.path.join(suite_dir, 'results.csv'), {'accuracy': table})
  parts = [report_lib.to_markdown(table, title='Accuracy (%; rope = rope_2d on image and '
                                               'pathfinder)')]
  if any(r.status != 'finished' for r in records):
    parts.append(report_lib.to_markdown(report_lib.status_table(records),
                                        title='Runs not finished'))
  return '\n'.join(parts)


if __name__ == '__main__':
  runner.run_suite(sys.modules[__name__])
