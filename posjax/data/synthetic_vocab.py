"""The vocabulary of the synthetic tasks (``posjax.data.synthetic``).

Vocabulary (one shared, ``VOCAB_SIZE`` = 1296 ids)
--------------------------------------------------
====================  =========================================================
id                    meaning
====================  =========================================================
0  ``PAD``            padding (never produced inside an example)
1  ``BOS``            begin of sequence (only if ``to_sequence(add_bos=True)``)
2  ``EOS``            end of a variable-length answer (``binary_addition``)
3  ``SEP``            separates inputs from targets in ``to_sequence``
4  ``QUERY``          starts the query block of ``associative_recall``
5  ``BLANK``          the removed token of ``missing_duplicate_string``
6  ``EMPTY``          odd-length filler of ``missing_duplicate_string``
7/8/9 ``PLUS``/``MINUS``/``TIMES``  operators (``binary_addition`` uses PLUS)
16 .. 1039            symbol ``k`` -> ``SYMBOL_OFFSET + k`` (``NUM_SYMBOLS``)
1040 .. 1295          byte ``b`` -> ``BYTE_OFFSET + b`` (``passkey`` only)
====================  =========================================================
"""
from __future__ import annotations

import re

import numpy as np

PAD, BOS, EOS, SEP, QUERY, BLANK, EMPTY = 0, 1, 2, 3, 4, 5, 6
PLUS, MINUS, TIMES = 7, 8, 9
SPECIAL_NAMES = {PAD: '<pad>', BOS: '<bos>', EOS: '<eos>', SEP: '<sep>',
                 QUERY: '<query>', BLANK: '<blank>', EMPTY: '<empty>',
                 PLUS: '+', MINUS: '-', TIMES: '*'}
SYMBOL_OFFSET = 16
NUM_SYMBOLS = 1024
BYTE_OFFSET = SYMBOL_OFFSET + NUM_SYMBOLS  # 1040
VOCAB_SIZE = BYTE_OFFSET + 256  # 1296

MODULUS = 5  # modular_arithmetic
BUCKET_ALPHABET = 5  # bucket_sort
COPY_ALPHABET = 16  # copy (default)
AR_NUM_KEYS = NUM_SYMBOLS // 2  # associative_recall: keys [0, 512), values [512, 1024)


def sym(k) -> np.ndarray:
  """Symbol index (int or array) -> token id(s)."""
  return (np.asarray(k) + SYMBOL_OFFSET).astype(np.int32)


def encode_bytes(text: str | bytes) -> np.ndarray:
  if isinstance(text, str):
    text = text.encode('utf-8')
  return np.frombuffer(text, dtype=np.uint8).astype(np.int32) + BYTE_OFFSET


def decode_bytes(ids) -> str:
  ids = np.asarray(ids)
  if ids.size and (ids.min() < BYTE_OFFSET or ids.max() >= VOCAB_SIZE):
    raise ValueError('not a byte token')
  return (ids - BYTE_OFFSET).astype(np.uint8).tobytes().decode('utf-8')


def detokenize(ids) -> str:
  """Human-readable rendering (debugging): bytes as text, symbols as ``s<k>``."""
  out = []
  for t in np.asarray(ids).tolist():
    if t >= BYTE_OFFSET:
      out.append(chr(t - BYTE_OFFSET))
    elif t >= SYMBOL_OFFSET:
      out.append(f' s{t - SYMBOL_OFFSET} ')
    else:
      out.append(f' {SPECIAL_NAMES.get(t, f"<{t}>")} ')
  return re.sub(' +', ' ', ''.join(out))
