"""The exact evaluators of the synthetic tasks (``posjax.data.synthetic``): each
parses an example's input tokens back and computes the answer, written
independently of the generators, so ``synthetic.solve`` checks them.
"""
from __future__ import annotations

import re

import numpy as np

from posjax.data.synthetic_vocab import (BLANK, BYTE_OFFSET, EMPTY, EOS, MINUS, MODULUS, PLUS,
                                         QUERY, SYMBOL_OFFSET, TIMES, decode_bytes, encode_bytes,
                                         sym)


def _to_symbols(ids) -> list[int]:
  ids = np.asarray(ids).tolist()
  if any(not SYMBOL_OFFSET <= t < BYTE_OFFSET for t in ids):
    raise ValueError('expected symbol tokens only')
  return [t - SYMBOL_OFFSET for t in ids]


def solve_reverse_string(inputs):
  return sym(_to_symbols(inputs)[::-1])


def solve_duplicate_string(inputs):
  s = _to_symbols(inputs)
  return sym(s + s)


def solve_missing_duplicate_string(inputs):
  toks = list(np.asarray(inputs).tolist())
  if toks and toks[-1] == EMPTY:
    toks = toks[:-1]
  half = len(toks) // 2
  j = toks.index(BLANK)
  return np.array([toks[(j + half) % (2 * half)]], np.int32)


def solve_parity_check(inputs):
  return sym([sum(_to_symbols(inputs)) % 2])


def solve_binary_addition(inputs):
  toks = np.asarray(inputs).tolist()
  parts = ([toks[:toks.index(PLUS)], toks[toks.index(PLUS) + 1:]]
           if PLUS in toks else [toks])
  total = sum(int(''.join(map(str, _to_symbols(p)))[::-1], 2) for p in parts)
  bits = [int(c) for c in bin(total)[2:][::-1]]
  return np.concatenate([sym(bits), np.array([EOS], np.int32)])


def solve_bucket_sort(inputs):
  return sym(sorted(_to_symbols(inputs)))


def solve_modular_arithmetic(inputs):
  chars = {PLUS: '+', MINUS: '-', TIMES: '*'}
  text = ''.join(chars[t] if t in chars else str(t - SYMBOL_OFFSET)
                 for t in np.asarray(inputs).tolist())
  if not re.fullmatch(r'[0-4]([-+*][0-4])*', text):
    raise ValueError(f'bad expression {text!r}')
  total = 0
  for sign, term in re.findall(r'([-+]?)([0-9*]+)', text):
    value = 1
    for d in term.split('*'):
      value *= int(d)
    total += -value if sign == '-' else value
  return sym([total % MODULUS])


def solve_copy(inputs):
  return np.asarray(inputs, np.int32).copy()


def solve_passkey(inputs):
  m = re.search(r'The pass key is (\d{5})\. Remember it\.', decode_bytes(inputs))
  if m is None:
    raise ValueError('no pass key in the input')
  return encode_bytes(m.group(1))


def solve_associative_recall(inputs):
  toks = np.asarray(inputs).tolist()
  q = toks.index(QUERY)
  table = dict(zip(toks[0:q:2], toks[1:q:2]))
  return np.array([table[k] for k in toks[q + 1:]], np.int32)
