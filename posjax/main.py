"""Trains a model: ``python -m posjax.main --config=configs/lm.py:runlocal --workdir=DIR``.

Kept thin: all logic lives in ``posjax.train`` (importable from a notebook).
"""
import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')


def _fail(message: str, code: int):
  sys.stderr.write(f'error: {message}\n')
  sys.exit(code)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}', 2)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  run_job(_CONFIG.value, _WORKDIR.value)


def run_job(config, workdir: str | None):
  """Validates, trains and reports: everything after flag parsing."""
  from posjax import checkpoint, train
  if not workdir:
    _fail('--workdir is required', 2)
  try:
    train.maybe_initialize_distributed(config)
    train.validate_config(config)
    checkpoint.check_resumable(workdir, config)
  except (ValueError, KeyError, AttributeError, TypeError) as e:
    _fail(str(e).strip('"\''), 2)
  try:
    final = train.train_and_evaluate(config, workdir)
  except FloatingPointError as e:
    _fail(str(e), 1)
  workdir = os.path.abspath(workdir)
  print(f'checkpoints: {checkpoint.checkpoint_dir(workdir)}')
  print(f'tensorboard: tensorboard --logdir {workdir}')
  print(f'metrics:     {os.path.join(workdir, "metrics.jsonl")}')
  print('final evaluation:')
  for k in sorted(k for k in final if k.startswith('eval/')):
    print(f'  {k:28s} {final[k]:.4f}')


def run():
  flags.mark_flags_as_required(['config'])
  try:
    app.run(main)
  except flags.Error as e:  # pragma: no cover
    _fail(str(e), 2)


if __name__ == '__main__':
  run()
