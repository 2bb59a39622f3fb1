"""Trains a SentencePiece model on the train split of an LM dataset.

  python -m posjax.data.train_tokenizer --path='~/corpus/*.txt' --vocab_size=8000 --output=/tmp/spm
  python -m posjax.data.train_tokenizer --name=pg19 --data_dir=$TFDS --vocab_size=32000 \
      --output=/tmp/pg19_spm

then train with ``--config.data.tokenizer=/tmp/spm.model`` and
``--config.model.vocab_size=<vocab_size + 4>`` (posjax keeps ids 0..3 for PAD,
BOS, EOS, CLS).
"""
import itertools
import sys

import ml_collections
from absl import app, flags

_NAME = flags.DEFINE_string('name', 'local_text', 'local_text or a TFDS text dataset.')
_PATH = flags.DEFINE_string('path', '', "local_text: directory or glob ('' = the stdlib).")
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS data_dir.')
_TEXT_KEY = flags.DEFINE_string('text_key', '', "The text feature ('' = the dataset's).")
_VOCAB = flags.DEFINE_integer('vocab_size', 8000, 'SentencePiece pieces.')
_DOCS = flags.DEFINE_integer('max_documents', 20_000, 'Documents read from the train split.')
_OUTPUT = flags.DEFINE_string('output', None, 'Model prefix: writes PREFIX.model / .vocab.')


def main(argv):
  del argv
  from posjax.data import inputs, text
  config = ml_collections.ConfigDict({'data': dict(
      name=_NAME.value, path=_PATH.value, data_dir=_DATA_DIR.value, size='full',
      text_key=_TEXT_KEY.value)})
  try:
    if not _OUTPUT.value:
      raise ValueError('--output: required; allowed: a path prefix for PREFIX.model')
    split, key = inputs.source(config)['train'], inputs.text_key(config)
    docs = (split[i][key] for i in itertools.islice(range(len(split)), _DOCS.value))
    path = text.train_sentencepiece(docs, _OUTPUT.value, vocab_size=_VOCAB.value)
  except ValueError as e:
    sys.stderr.write(f'error: {e}\n')
    sys.exit(2)
  print(f'wrote {path}: --config.data.tokenizer={path} '
        f'--config.model.vocab_size={text.tokenizer(path).vocab_size}')


if __name__ == '__main__':
  app.run(main)
