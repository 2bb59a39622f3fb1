"""Input pipelines. ``text`` is a byte-level local-text reader (grain)."""
from posjax.data import text  # noqa: F401
from posjax.data.text import (BOS, CLS, EOS, PAD, VOCAB_SIZE, decode, encode,
                              eval_batches, list_documents, split_documents,
                              train_iterator)
