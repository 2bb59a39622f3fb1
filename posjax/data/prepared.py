"""What every posjax TFDS builder shares: sizes as configs, array_record files, and
the build inputs recorded next to the data.

A builder's inputs (``seed``; for ``path`` / ``manual_dir`` the files' names, sizes and
modification times), the sizes of the files it wrote and what it warned of are saved in
the dataset's ``metadata.json``. ``prepare`` builds a dataset, reuses it when the
recorded inputs are the requested ones and its files are all there, and rebuilds it
when they differ (``mismatch``) or a file is missing or resized (``damage``); a
reader repeats the build's warnings (``warn_recorded``). Asked for no config
(``tfds.data_source('listops', data_dir=D)``), a builder opens the one size built in
``D``, or raises a one-line error naming those built and how to build one; it never
starts a build then.
"""
from __future__ import annotations

import abc
import hashlib
import json
import os
import sys
from typing import Any, Iterator, Sequence

import tensorflow_datasets as tfds

SIZES = ('tiny', 'small', 'full')
INPUTS = 'posjax_inputs'  # The key of the build inputs in metadata.json.
FILES = 'posjax_files'  # Bytes of each file the build wrote.
WARNINGS = 'posjax_warnings'  # What the build warned of (one line each).
_REBUILD = tfds.download.DownloadConfig(download_mode=tfds.GenerateMode.REUSE_CACHE_IF_EXISTS)


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A posjax dataset: configs ``full`` / ``small`` / ``tiny``, written as array_record.

  Subclasses give ``splits()`` (split -> iterator of ``(key, example)``; one-line
  ValueError for bad inputs, before anything is written) and ``inputs()``.
  """
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=s) for s in ('full', 'small', 'tiny')]
  OPTIONS: tuple[str, ...] = ()  # Keyword arguments of ``builders.build`` this builder takes.
  progress = None  # Anything with ``update(n)`` (a tqdm bar), told of every example written.

  def __init__(self, *, config=None, data_dir=None, file_format='array_record', **kwargs):
    if config is None:
      config = built_config(type(self), data_dir)
    super().__init__(config=config, data_dir=data_dir, file_format=file_format, **kwargs)

  @abc.abstractmethod
  def splits(self) -> dict[str, Iterator[tuple[Any, dict]]]:
    """The examples of each split."""

  @abc.abstractmethod
  def inputs(self) -> dict[str, Any]:
    """What the data is made from, one JSON value per entry of ``OPTIONS``."""

  def dataset_info(self, features, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=features, description=description,
                                 metadata=tfds.core.MetadataDict())

  def download_and_prepare(self, **kwargs):
    # Find the inputs (or raise the one-line error) before TFDS writes or deletes anything.
    self._warnings = []
    self._splits = self.splits()
    self.info.metadata[INPUTS] = self.inputs()
    self.info.metadata[WARNINGS] = self._warnings
    super().download_and_prepare(**kwargs)

  def warn(self, message: str) -> None:
    """From ``splits()``: says ``message`` on stderr now and to every reader (``warn_recorded``)."""
    self._warnings.append(message)
    _say(f'{self.name}/{self.builder_config.name}: {message}')

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples) for split, examples in self._splits.items()}

  def _generate_examples(self, examples):
    for key_and_example in examples:
      yield key_and_example
      if self.progress is not None:
        self.progress.update(1)

  # posjax's build CLI prints its own lines instead of TFDS's banners.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


def built_config(cls: type[Builder], data_dir: str | None) -> str:
  """The one size of ``cls`` built in ``data_dir``; a one-line ValueError otherwise."""
  root = os.path.expanduser(os.fspath(data_dir or tfds.core.constants.DATA_DIR))
  built = [s for s in SIZES if os.path.isfile(
      os.path.join(root, cls.name, s, str(cls.VERSION), 'dataset_info.json'))]
  if len(built) == 1:
    return built[0]
  if built:
    names = ', '.join(f"'{cls.name}/{s}'" for s in built)
    raise ValueError(f'{cls.name} config: got none, and {root!r} holds {len(built)}; '
                     f'allowed: {names}')
  raise ValueError(f"{cls.name} config: got none, and none is built in {root!r}; allowed: "
                   f"'{cls.name}/SIZE' after python -m posjax.data.build {cls.name} "
                   f"--data_dir={root} --size=SIZE (SIZE: {', '.join(SIZES)})")


def files_fingerprint(path: str, files: Sequence[str]) -> str:
  """``path``, how many files and a hash of their names, sizes and mtimes."""
  stats = [(f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
  digest = hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:12]
  return f'{path}: {len(files)} files, {digest}'


def tree_fingerprint(path: str | None) -> str | None:
  """``files_fingerprint`` of every file under directory (or file) ``path``."""
  if not path:
    return None
  root = os.path.realpath(os.path.expanduser(path))
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs] or [root]
  return files_fingerprint(root, sorted(f for f in files if os.path.isfile(f)))


def is_built(builder: Builder) -> bool:
  """Whether the data is there (``builder.is_prepared()`` without its warning when not)."""
  return os.path.isfile(os.path.join(builder.data_dir, 'dataset_info.json'))


def _metadata(builder: Builder) -> dict:
  path = os.path.join(builder.data_dir, 'metadata.json')
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def recorded(builder: Builder) -> dict | None:
  """The inputs recorded with the data in ``builder.data_dir``; None without a record."""
  return _metadata(builder).get(INPUTS)


def damage(builder: Builder) -> str | None:
  """What is wrong with the files of the data in ``builder.data_dir`` (one missing, or of
  another size than the build wrote); None when they are all there."""
  if not is_built(builder):
    return 'dataset_info.json is missing'
  sizes = _metadata(builder).get(FILES, {})
  names = {p.name for split in builder.info.splits.values() for p in split.filepaths}
  for name in sorted(names | set(sizes)):
    path = os.path.join(builder.data_dir, name)
    if not os.path.isfile(path):
      return f'{name} is missing'
    if name in sizes and os.path.getsize(path) != sizes[name]:
      return f'{name} has {os.path.getsize(path)} bytes, the build wrote {sizes[name]}'
  return None


def warn_recorded(builder: Builder) -> None:
  """Says on stderr what the build of the data in ``builder.data_dir`` warned of."""
  for message in _metadata(builder).get(WARNINGS, ()):
    _say(f'{builder.name}/{builder.builder_config.name}: {message}')


def _say(line: str) -> None:
  sys.stderr.write(line + '\n')


def mismatch(builder: Builder, options: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
  """Each input (of ``options``, if given) whose recorded value differs from
  ``builder``'s: ``(recorded, requested)``; empty when nothing is recorded."""
  have = recorded(builder) if is_built(builder) else None
  if have is None:
    return {}
  want = builder.inputs()
  return {k: (have.get(k), want[k]) for k in options or want if have.get(k) != want[k]}


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
  return ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in diff.items())


def prepare(builder: Builder, progress=None) -> str | None:
  """Writes ``builder``'s data into its data_dir unless it is there, whole, with the
  same inputs; returns a line saying it reused or rebuilt it (None: built afresh)."""
  _check_writable(os.fspath(builder.data_dir_root))
  note = None
  if is_built(builder):
    diff, broken = mismatch(builder), damage(builder)
    if recorded(builder) is not None and not diff and not broken:
      return 'reused (built with these inputs)'
    note = f'rebuilt ({broken or describe(diff) or "it had no record of its inputs"})'
  builder.progress = progress
  builder.download_and_prepare(download_config=_REBUILD)
  builder.info.metadata[FILES] = {f: os.path.getsize(os.path.join(builder.data_dir, f))
                                  for f in sorted(os.listdir(builder.data_dir))
                                  if f != 'metadata.json'}
  builder.info.metadata.save_metadata(builder.data_dir)
  return note


def _check_writable(data_dir: str) -> None:
  try:
    os.makedirs(data_dir, exist_ok=True)
    if not os.access(data_dir, os.W_OK):
      raise PermissionError(13, 'not writable')
  except OSError as e:
    raise ValueError(f'data_dir: got {data_dir!r} ({e.strerror or e}); allowed: a directory '
                     'you can write') from None
