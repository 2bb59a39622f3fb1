"""Where an experiment's data comes from: ``config.data`` -> a TFDS data source.

Every dataset is read from its prepared array_record files (``tfds`` data
sources, no TensorFlow, no download): ``local_text`` without a ``data_dir`` is
built on first use into a cache (``posjax.data.text``); generated and LRA
datasets are written by ``python -m posjax.data.build NAME --data_dir=DIR
--size=SIZE [--manual_dir=M]``; any TFDS text dataset prepared as array_record
(lm1b, pg19, wiki40b/en, c4/en, ...) is read from ``data.data_dir``. What a
task does with the source (pipelines, checks) lives in ``posjax.tasks``.
"""
from __future__ import annotations

import hashlib
import json
import os

from tensorflow_datasets.core import read_only_builder

from posjax.data import builders, text


# TFDS catalog LM datasets: the feature holding the text.
LM_CATALOG = {'lm1b': 'text', 'pg19': 'book_text', 'wiki40b': 'text', 'c4': 'text'}


def _tfds_name(config) -> str:
  name = config.data.name
  return f'{name}/{config.data.get("size", "full")}' if name in builders.BUILDERS else name


def source(config):
  """The TFDS data source of ``config.data``, or a one-line error saying how to get it."""
  return builder(config).as_data_source()


def fingerprint(b) -> str:
  """What identifies a prepared dataset's contents: its directory, splits and
  file sizes (a rebuilt cache or an edited corpus changes it)."""
  files = sorted((f, os.path.getsize(os.path.join(b.data_dir, f)))
                 for f in os.listdir(b.data_dir) if f != 'metadata.json')
  return hashlib.sha1(json.dumps([b.data_dir, files]).encode()).hexdigest()[:16]


def builder(config):
  """The read-only TFDS builder of ``config.data``'s prepared files (see ``source``)."""
  name, data_dir = config.data.name, config.data.get('data_dir') or None
  if name == 'local_text' and not data_dir:
    data_dir = text.local_text_dir(config.data.get('path', ''), config.data.get('size', 'full'))
  elif name in builders.BUILDERS and data_dir:  # Built by the user: from these inputs?
    builders.check_matches(name, data_dir, config.data.get('size', 'full'),
                           path=config.data.get('path') or None,
                           seed=config.data.get('seed'))
  full = _tfds_name(config)
  if name in builders.BUILDERS:
    how = (f'allowed: a data_dir where it was built (python -m posjax.data.build {name} '
           f'--data_dir={data_dir or "DIR"} --size={config.data.get("size", "full")})')
    if not data_dir:
      raise ValueError(f'data.data_dir: required for {name}; allowed: a directory where you '
                       f'ran `python -m posjax.data.build {name} --data_dir=DIR`')
  else:
    how = (f'allowed: a TFDS dataset prepared there as array_record, e.g. `tfds build '
           f'{name} --data_dir={data_dir or "~/tensorflow_datasets"} --file_format=array_record`'
           ' (or `tfds convert_format` of a tfrecord copy), or data.name=local_text')
  try:  # From the prepared files alone: no builder code (catalog builders may need TF),
    # and never a download (tfds.data_source would start one for a missing dataset).
    return read_only_builder.builder_from_files(full, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for a missing dataset.
    field = 'data.data_dir' if name in builders.BUILDERS else 'data.name'
    raise ValueError(f'{field}: no {full} under {data_dir or "the TFDS default data_dir"!r} '
                     f'({type(e).__name__}); {how}') from None


def text_key(config) -> str:
  name = config.data.name.split('/')[0].split(':')[0]
  return config.data.get('text_key') or LM_CATALOG.get(name, 'text')


def eval_split(config, src) -> str:
  """``data.eval_split``, else validation, else test."""
  if config.data.get('eval_split'):
    return config.data.eval_split
  return 'validation' if 'validation' in src else 'test'
