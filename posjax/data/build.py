"""Builds a dataset as array_record files readable by ``tfds.data_source``.

  python -m posjax.data.build NAME --data_dir=DIR [--size=tiny|small|full] [--seed=S]

then ``tfds.data_source('NAME/SIZE', data_dir=DIR)`` reads it (after
``import posjax.data.builders``, which registers the builders).
"""
import sys

from absl import app, flags

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the dataset is written.')
_SIZE = flags.DEFINE_string('size', 'tiny', 'tiny | small | full (the papers\' sizes).')
_SEED = flags.DEFINE_integer('seed', 0, 'Generation seed.')


def _fail(message: str):
  sys.stderr.write(f'error: {message}\n')
  sys.exit(2)


def main(argv):
  from posjax.data import builders
  if len(argv) != 2:
    _fail(f'name: give exactly one dataset; allowed: {", ".join(sorted(builders.BUILDERS))}')
  if not _DATA_DIR.value:
    _fail('--data_dir is required')
  try:
    name = builders.build(argv[1], data_dir=_DATA_DIR.value, size=_SIZE.value, seed=_SEED.value)
  except ValueError as e:
    _fail(str(e))
  print(f"built: tfds.data_source('{name}', data_dir='{_DATA_DIR.value}')")


if __name__ == '__main__':
  app.run(main)
