"""Builds a dataset as array_record files readable by ``tfds.data_source``.

  python -m posjax.data.build NAME --data_dir=DIR [--size=tiny|small|full] [--seed=S]
  python -m posjax.data.build local_text --data_dir=DIR --path='~/corpus/**/*.txt' --size=full
  python -m posjax.data.build lra_text --data_dir=DIR --manual_dir=M  # also lra_retrieval, lra_image

prints one line per split and a ``built:`` line (meanwhile, for builds of over half a
second, a progress bar on stderr),
then ``tfds.data_source('NAME/SIZE', data_dir=DIR)`` reads it (after
``import posjax.data.builders``, which registers the builders). A dataset already in
DIR is reused if it was built from the same inputs (seed, files) and rebuilt otherwise.
Bad input is one ``error:`` line and exit status 2.
"""
import sys

from absl import flags
import tensorflow_datasets as tfds
import tqdm

from posjax.data import builders, prepared


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string('data_dir', None, 'Where the dataset is written.', flag_values=fv)
  flags.DEFINE_string('size', 'tiny', "tiny | small | full (the papers' sizes).", flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Generation seed.', flag_values=fv)
  flags.DEFINE_string('manual_dir', None, 'lra_text / lra_retrieval / lra_image: the directory '
                      'holding the downloaded files.', flag_values=fv)
  flags.DEFINE_string('path', None, "local_text: a directory or glob of text files "
                      "('' = the Python standard library).", flag_values=fv)
  return fv


def fail(message: str) -> int:
  sys.stderr.write(f'error: {message}\n')
  return 2


def parse(fv: flags.FlagValues, argv: list[str], doc: str) -> list[str] | int:
  """The positional arguments of a data CLI, or its exit code: 0 after --help,
  2 after a one-line error for a bad flag."""
  if any(a in ('-h', '--help', '--helpshort', '--helpfull') for a in argv[1:]):
    print(doc + '\n' + fv.get_help())
    return 0
  try:
    return fv(argv)
  except flags.Error as e:
    allowed = ', '.join(f'--{f}' for f in fv)
    return fail(f'flags: {str(e).splitlines()[0]}; allowed: {allowed}')


def main(argv: list[str]) -> int:
  fv = _flags()
  args = parse(fv, argv, __doc__)
  if isinstance(args, int):
    return args
  if len(args) != 2:
    return fail(f'name: got {args[1:]}; allowed: one of {", ".join(sorted(builders.BUILDERS))}')
  if not fv.data_dir:
    return fail('data_dir: got nothing; allowed: --data_dir=DIR, where the dataset is written')
  name, size = args[1], fv.size
  full = f'{name}/{size}'
  tfds.disable_progress_bar()  # TFDS's bars (several per split): ours instead.
  try:
    builder = builders.make(name, data_dir=fv.data_dir, size=size, seed=fv.seed, path=fv.path,
                            manual_dir=fv.manual_dir)
    with tqdm.tqdm(desc=full, unit=' examples', leave=False, delay=0.5, file=sys.stderr) as bar:
      note = prepared.prepare(builder, progress=bar)
  except ValueError as e:
    return fail(str(e))
  if note:
    print(f'{full}: {note}')
  for split, info in builder.info.splits.items():
    print(f'{full} {split}: {info.num_examples} examples')
  print(f"built: {builder.data_dir}  (tfds.data_source('{full}', data_dir='{fv.data_dir}'))")
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
