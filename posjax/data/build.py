"""Builds a dataset as array_record files readable by ``tfds.data_source``.

  python -m posjax.data.build NAME --data_dir=DIR [--size=tiny|small|full] [--seed=S]
  python -m posjax.data.build local_text --data_dir=DIR --path='~/corpus/**/*.txt' --size=full
  python -m posjax.data.build lra_text --data_dir=DIR --manual_dir=M  # also lra_retrieval, lra_image

then ``tfds.data_source('NAME/SIZE', data_dir=DIR)`` reads it (after
``import posjax.data.builders``, which registers the builders).
"""
import sys

from absl import app, flags

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the dataset is written.')
_SIZE = flags.DEFINE_string('size', 'tiny', 'tiny | small | full (the papers\' sizes).')
_SEED = flags.DEFINE_integer('seed', 0, 'Generation seed.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'lra_text / lra_retrieval / lra_image: '
                                   'the directory holding the downloaded files.')
_PATH = flags.DEFINE_string('path', None, "local_text: a directory or glob of text files "
                            "('' = the Python standard library).")


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
    name = builders.build(argv[1], data_dir=_DATA_DIR.value, size=_SIZE.value, seed=_SEED.value,
                          path=_PATH.value, manual_dir=_MANUAL_DIR.value)
  except ValueError as e:
    _fail(str(e))
  print(f"built: tfds.data_source('{name}', data_dir='{_DATA_DIR.value}')")


if __name__ == '__main__':
  app.run(main)
