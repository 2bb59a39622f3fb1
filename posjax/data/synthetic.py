"""Synthetic length-generalisation tasks: pure numpy, deterministic by seed.

Tasks (``TASKS``) follow Delétang et al. 2023 ("Neural Networks and the Chomsky
Hierarchy", the google-deepmind/neural_networks_chomsky_hierarchy code) as used
by Ruoss et al. 2023 ("Randomized Positional Encodings Boost Length
Generalization of Transformers"), plus ``copy``, ``passkey`` (Mohtashami &
Jaggi 2023, "Landmark Attention") and ``associative_recall`` (multi-query
associative recall, MQAR; Arora et al. 2023, "Zoology").

API
---
``generate(task, *, length, num_examples, seed, **task_kwargs)`` returns a list
of ``{'inputs': int32[...], 'targets': int32[...], 'length': int}``.  Example
``i`` is drawn from ``np.random.default_rng([seed, crc32(task), length, i])``,
so it does not depend on ``num_examples`` (shardable) and lengths are
independent streams.  ``to_sequence`` turns an example into the decoder-only
format, ``solve`` recomputes the targets from the inputs (an exact evaluator
written independently of the generators, in ``synthetic_solvers``); the lengths
are in ``synthetic_splits``.

Vocabulary: ``synthetic_vocab`` (1296 ids: specials, 1024 symbols, 256 bytes).

Symbols: binary tasks use symbols 0/1 (bits), ``bucket_sort`` and
``modular_arithmetic`` use 0..4, ``copy`` uses 0..alphabet_size-1 (default 16),
``associative_recall`` uses keys in [0, 512) and values in [512, 1024).

Tasks and the meaning of ``length`` (n)
---------------------------------------
For the Delétang tasks ``length`` is the paper's ``length`` argument, i.e. the
number of *input* tokens (so the Ruoss protocol's per-length accuracy refers to
the same n as the paper); ``TASKS[t].input_length(n)`` / ``target_length(n)``
give the exact sizes (``None`` = variable).

- ``reverse_string``: n bits -> the n bits reversed.
- ``duplicate_string``: n bits s -> ss (2n).
- ``missing_duplicate_string``: s of n//2 bits, input = ss with one uniformly
  chosen position (in either copy) replaced by BLANK, plus one EMPTY at the end
  when n is odd (as the paper) -> the missing bit (1 token).  n >= 2.
- ``parity_check``: n bits -> number of 1s mod 2 (1 token; 1 = odd).
- ``binary_addition``: **little-endian** (least significant bit first, as the
  paper).  For n >= 3: ``a PLUS b`` with len(a) ~ U{1..n-2}, len(b) = n-1-len(a)
  (zero-padded to those widths, values uniform in [1, 2^len - 1]); for n <= 2
  (the paper's degenerate case): a single n-bit number, no PLUS.  Target = the
  sum, little-endian, without leading zeros (0 -> "0"), followed by EOS (the
  paper's termination token; its zero padding after it is dropped), so targets
  are variable length (<= n).
- ``bucket_sort``: n symbols over {0..4} -> sorted ascending.
- ``modular_arithmetic``: the paper's brackets-free ("simple") task: an
  alternating sequence ``d op d op ... d`` with digits in {0..4} and ops in
  {+, -, *}; n tokens when n is odd, n - 1 when n is even (the paper's rule),
  i.e. (n+1)//2 terms.  Value computed with **standard precedence** (``*``
  binds tighter than ``+``/``-``, which are left-associative), mod 5 — exactly
  what the paper's evaluator does (``1 + 2 * 3 = 2``, ``1 - 1 - 1 = 4``).
- ``copy``: n symbols -> the same n symbols.
- ``passkey``: byte tokens.  Text = fixed preamble + filler sentences ("The
  grass is green. The sky is blue. ...", cycled) with the key sentence
  ``"The pass key is 12345. Remember it. 12345 is the pass key. "`` inserted
  after ``round(depth * k)`` of the ``k`` filler sentences, + the question
  ``"What is the pass key? The pass key is "``.  k is the largest count that
  keeps the input <= n bytes, so n - 22 < len(inputs) <= n.  The key is 5
  digits in 10000..99999; target = its 5 digit bytes.  ``depth`` (in [0, 1])
  defaults to U[0, 1] per example.  n >= ``TASKS['passkey'].min_length``.
- ``associative_recall`` (MQAR): n pairs ``k1 v1 ... kn vn`` (distinct keys,
  values with replacement) then ``QUERY q1 .. qm``; targets = ``v(q1) .. v(qm)``.
  ``num_queries`` defaults to n (every key queried once, random order, as
  Zoology's MQAR); m <= n samples distinct keys, m > n with replacement.
  n <= 512.

Decoder-only format (``to_sequence``)
-------------------------------------
``tokens = [BOS]? + inputs + [SEP] + targets`` and ``loss_mask[t]`` is True iff
``tokens[t + 1]`` is a target token, i.e. on the SEP position and on every
target position except the last.  With the usual shift, train on
``x = tokens[:-1], y = tokens[1:], w = loss_mask[:-1]`` (the last entry of
``loss_mask`` is always False); an example is correct iff the argmax at every
masked position equals the next token.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable, Optional

import numpy as np

# The shared vocabulary (one id space for every task), re-exported.
from posjax.data.synthetic_vocab import (  # noqa: F401
    AR_NUM_KEYS, BLANK, BOS, BUCKET_ALPHABET, BYTE_OFFSET, COPY_ALPHABET, EMPTY, EOS,
    MINUS, MODULUS, NUM_SYMBOLS, PAD, PLUS, QUERY, SEP, SPECIAL_NAMES, SYMBOL_OFFSET,
    TIMES, VOCAB_SIZE, decode_bytes, detokenize, encode_bytes, sym)
from posjax.data import synthetic_solvers as solvers


# ------------------------------------------------------------------ generators
# Each takes (rng, n, **kwargs) and returns (inputs, targets) as int32 arrays.

def _gen_reverse_string(rng, n):
  bits = rng.integers(0, 2, n)
  return sym(bits), sym(bits[::-1])


def _gen_duplicate_string(rng, n):
  bits = rng.integers(0, 2, n)
  return sym(bits), sym(np.concatenate([bits, bits]))


def _gen_missing_duplicate_string(rng, n):
  half = rng.integers(0, 2, n // 2)
  ss = sym(np.concatenate([half, half]))
  j = int(rng.integers(0, ss.size))
  target = ss[j:j + 1].copy()
  ss[j] = BLANK
  if n % 2:
    ss = np.concatenate([ss, np.array([EMPTY], np.int32)])
  return ss, target


def _gen_parity_check(rng, n):
  bits = rng.integers(0, 2, n)
  return sym(bits), sym([int(bits.sum()) % 2])


def _le_bits(value: int, width: int) -> list[int]:
  """Little-endian bits of ``value``, zero-padded to ``width`` (at least 1 bit)."""
  bits = []
  while value:
    bits.append(value & 1)
    value >>= 1
  bits = bits or [0]
  return bits + [0] * (width - len(bits))


def _gen_binary_addition(rng, n):
  if n <= 2:
    a = int(rng.integers(0, 2 ** n))
    return sym(_le_bits(a, n)), np.concatenate(
        [sym(_le_bits(a, 0)), np.array([EOS], np.int32)])
  la = int(rng.integers(1, n - 1))
  lb = n - 1 - la
  # Python ints: values up to 2**(n-2) overflow int64 for long inputs.
  a = 1 + int.from_bytes(rng.bytes((la + 7) // 8 + 8), 'little') % (2 ** la - 1)
  b = 1 + int.from_bytes(rng.bytes((lb + 7) // 8 + 8), 'little') % (2 ** lb - 1)
  inputs = np.concatenate([sym(_le_bits(a, la)), np.array([PLUS], np.int32),
                           sym(_le_bits(b, lb))])
  targets = np.concatenate([sym(_le_bits(a + b, 0)), np.array([EOS], np.int32)])
  return inputs, targets


def _gen_bucket_sort(rng, n):
  s = rng.integers(0, BUCKET_ALPHABET, n)
  return sym(s), sym(np.sort(s))


_OPS = np.array([PLUS, MINUS, TIMES], np.int32)


def _gen_modular_arithmetic(rng, n):
  num_terms = (n + 1) // 2  # n odd: n tokens; n even: n - 1 tokens
  digits = rng.integers(0, MODULUS, num_terms)
  ops = _OPS[rng.integers(0, 3, num_terms - 1)]
  expr = np.empty(2 * num_terms - 1, np.int32)
  expr[0::2] = sym(digits)
  expr[1::2] = ops
  # Left-to-right scan: total of finished additive terms + running product.
  total, prod = 0, int(digits[0])
  for op, d in zip(ops.tolist(), digits[1:].tolist()):
    if op == TIMES:
      prod = prod * d % MODULUS
    else:
      total += prod
      prod = d if op == PLUS else -d
  return expr, sym([(total + prod) % MODULUS])


def _gen_copy(rng, n, alphabet_size: int = COPY_ALPHABET):
  if not 1 <= alphabet_size <= NUM_SYMBOLS:
    raise ValueError(f'alphabet_size must be in [1, {NUM_SYMBOLS}]')
  s = sym(rng.integers(0, alphabet_size, n))
  return s, s.copy()


_PK_PREAMBLE = ('There is an important info hidden inside a lot of irrelevant '
                'text. Find it and memorize it. I will quiz you about the '
                'important information there. ')
_PK_FILLER = ('The grass is green. ', 'The sky is blue. ', 'The sun is yellow. ',
              'Here we go. ', 'There and back again. ')
_PK_KEY = 'The pass key is {key}. Remember it. {key} is the pass key. '
_PK_QUESTION = 'What is the pass key? The pass key is '
_PK_FIXED = len(_PK_PREAMBLE) + len(_PK_KEY.format(key='00000')) + len(_PK_QUESTION)


def _gen_passkey(rng, n, depth: Optional[float] = None):
  if depth is None:
    depth = float(rng.uniform(0.0, 1.0))
  if not 0.0 <= depth <= 1.0:
    raise ValueError(f'depth must be in [0, 1], got {depth}')
  key = f'{int(rng.integers(10000, 100000)):05d}'
  budget = n - _PK_FIXED
  filler, used = [], 0
  while used + len(_PK_FILLER[len(filler) % len(_PK_FILLER)]) <= budget:
    used += len(_PK_FILLER[len(filler) % len(_PK_FILLER)])
    filler.append(_PK_FILLER[len(filler) % len(_PK_FILLER)])
  at = int(round(depth * len(filler)))
  text = (_PK_PREAMBLE + ''.join(filler[:at]) + _PK_KEY.format(key=key)
          + ''.join(filler[at:]) + _PK_QUESTION)
  return encode_bytes(text), encode_bytes(key)


def _gen_associative_recall(rng, n, num_queries: Optional[int] = None):
  if n > AR_NUM_KEYS:
    raise ValueError(f'associative_recall supports at most {AR_NUM_KEYS} pairs')
  m = n if num_queries is None else int(num_queries)
  if m < 1:
    raise ValueError('num_queries must be >= 1')
  keys = rng.choice(AR_NUM_KEYS, n, replace=False)
  values = rng.integers(AR_NUM_KEYS, NUM_SYMBOLS, n)
  qi = rng.choice(n, m, replace=m > n)
  pairs = np.stack([keys, values], 1).reshape(-1)
  inputs = np.concatenate([sym(pairs), np.array([QUERY], np.int32), sym(keys[qi])])
  return inputs, sym(values[qi])


# ----------------------------------------------------------------------- specs

@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  description: str
  source: str
  min_length: int
  max_length: Optional[int]
  input_length: Callable[[int], Optional[int]]  # None = variable
  target_length: Callable[[int], Optional[int]]  # None = variable
  generator: Callable[..., tuple]
  solver: Callable[[np.ndarray], np.ndarray]


_DELETANG = 'Deletang et al. 2023 / Ruoss et al. 2023'
TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec('reverse_string', 'n bits -> reversed (DCF)', _DELETANG, 1, None,
             lambda n: n, lambda n: n, _gen_reverse_string, solvers.solve_reverse_string),
    TaskSpec('duplicate_string', 'n bits s -> ss (CS)', _DELETANG, 1, None,
             lambda n: n, lambda n: 2 * n, _gen_duplicate_string,
             solvers.solve_duplicate_string),
    TaskSpec('missing_duplicate_string', 'ss with one BLANK -> missing bit (CS)',
             _DELETANG, 2, None, lambda n: n, lambda n: 1,
             _gen_missing_duplicate_string, solvers.solve_missing_duplicate_string),
    TaskSpec('parity_check', 'n bits -> #1s mod 2 (R)', _DELETANG, 1, None,
             lambda n: n, lambda n: 1, _gen_parity_check, solvers.solve_parity_check),
    TaskSpec('binary_addition', 'little-endian a+b -> sum + EOS (CS)', _DELETANG,
             1, None, lambda n: n, lambda n: None, _gen_binary_addition,
             solvers.solve_binary_addition),
    TaskSpec('bucket_sort', 'n symbols over 5 -> sorted (CS)', _DELETANG, 1, None,
             lambda n: n, lambda n: n, _gen_bucket_sort, solvers.solve_bucket_sort),
    TaskSpec('modular_arithmetic', 'd op d ... mod 5, standard precedence (R)',
             _DELETANG, 1, None, lambda n: n if n % 2 else n - 1, lambda n: 1,
             _gen_modular_arithmetic, solvers.solve_modular_arithmetic),
    TaskSpec('copy', 'n symbols -> the same n symbols', 'copy', 1, None,
             lambda n: n, lambda n: n, _gen_copy, solvers.solve_copy),
    TaskSpec('passkey', '5-digit key hidden in filler bytes -> key',
             'Mohtashami & Jaggi 2023', _PK_FIXED, None, lambda n: None,
             lambda n: 5, _gen_passkey, solvers.solve_passkey),
    TaskSpec('associative_recall', 'n key-value pairs, QUERY keys -> values',
             'Arora et al. 2023 (Zoology MQAR)', 1, AR_NUM_KEYS,
             lambda n: None, lambda n: None, _gen_associative_recall,
             solvers.solve_associative_recall),
]}


def _spec(task: str) -> TaskSpec:
  if task not in TASKS:
    raise ValueError(f'unknown task {task!r}; expected one of {sorted(TASKS)}')
  return TASKS[task]


def example_rng(task: str, length: int, seed: int, index: int) -> np.random.Generator:
  """The generator of example ``index`` (stable across processes and versions)."""
  return np.random.default_rng(
      [int(seed), zlib.crc32(task.encode()), int(length), int(index)])


def generate(task: str, *, length: int, num_examples: int, seed: int,
             start_index: int = 0, **task_kwargs: Any) -> list[dict]:
  """``num_examples`` examples of ``task`` at length parameter ``length``.

  Example ``i`` uses ``example_rng(task, length, seed, start_index + i)``.
  ``task_kwargs``: ``depth`` (passkey), ``num_queries`` (associative_recall),
  ``alphabet_size`` (copy).
  """
  spec = _spec(task)
  length = int(length)
  if length < spec.min_length or (spec.max_length and length > spec.max_length):
    raise ValueError(f'{task}: length {length} outside '
                     f'[{spec.min_length}, {spec.max_length or "inf"}]')
  if seed < 0 or num_examples < 0:
    raise ValueError('seed and num_examples must be >= 0')
  out = []
  for i in range(num_examples):
    rng = example_rng(task, length, seed, start_index + i)
    inputs, targets = spec.generator(rng, length, **task_kwargs)
    out.append({'inputs': np.asarray(inputs, np.int32),
                'targets': np.asarray(targets, np.int32), 'length': length})
  return out


def solve(task: str, inputs) -> np.ndarray:
  """Exact targets for ``inputs`` (parses the tokens back; generator-independent)."""
  return np.asarray(_spec(task).solver(np.asarray(inputs)), np.int32)


def to_sequence(example: dict, *, add_bos: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """``([BOS] + inputs + [SEP] + targets, loss_mask)``; see the module docstring.

  ``loss_mask[t]`` is True iff ``tokens[t + 1]`` is a target token.
  """
  inputs = np.asarray(example['inputs'], np.int32)
  targets = np.asarray(example['targets'], np.int32)
  prefix = np.array([BOS] if add_bos else [], np.int32)
  tokens = np.concatenate([prefix, inputs, np.array([SEP], np.int32), targets])
  first_target = prefix.size + inputs.size + 1
  mask = np.zeros(tokens.size, np.bool_)
  mask[first_target - 1:first_target - 1 + targets.size] = True
  return tokens, mask
