"""Passkey retrieval for language models (Mohtashami & Jaggi 2023; the position
interpolation and YaRN papers' long-context check).

A row is filler text with one sentence that states a random 5-digit key at a
chosen depth (0 = the start, 1 = just before the question), then the question and
its answer::

    <filler> The pass key is 71432. Remember it. 71432 is the pass key. <filler>
    What is the pass key? The pass key is 71432

cut to exactly ``length`` model inputs. Only the answer's tokens are scored
(``weights``), and a row counts as retrieved when every one of them is the
model's argmax (``sequence_accuracy``), as in the papers' exact-match accuracy.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from posjax.data import pipelines

FILLER = ('The grass is green. The sky is blue. The sun is yellow. Here we go. '
          'There and back again. ')
NEEDLE = ' The pass key is {key}. Remember it. {key} is the pass key. '
QUESTION = ' What is the pass key? The pass key is '
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def set_name(length: int, depth: float) -> str:
  """The eval-set name: ``passkey_<length>_<depth in %>``."""
  return f'passkey_{length}_{round(100 * depth)}'


def example(encode: Callable[[str], np.ndarray], length: int, depth: float, key: int) -> dict:
  """One row ``{'inputs', 'targets', 'weights'}`` of exactly ``length`` tokens."""
  needle, question, answer = (np.asarray(encode(s), np.int32) for s in (
      NEEDLE.format(key=key), QUESTION, str(key)))
  fill = length + 1 - needle.size - question.size - answer.size
  if fill < 0:
    raise ValueError(f'passkey_lengths: got {length}; allowed: >= '
                     f'{length - fill} tokens (the needle, question and answer)')
  filler = np.asarray(encode(FILLER * (fill // len(FILLER) + 2)), np.int32)[:fill]
  before = int(round(depth * fill))
  tokens = np.concatenate([filler[:before], needle, filler[before:], question, answer])
  weights = np.zeros(tokens.size, np.float32)
  weights[-answer.size:] = 1.0
  return {'inputs': tokens[:-1], 'targets': tokens[1:], 'weights': weights[1:]}


def batches(encode: Callable[[str], np.ndarray], *, length: int, depth: float,
            num_examples: int, batch_size: int, seed: int, process_index: int = 0,
            process_count: int = 1) -> list[dict]:
  """This process's rows ``p, p + P, ...`` of ``num_examples`` keys (the same keys for
  every length and depth), padded to whole batches with zero-weight copies."""
  keys = np.random.default_rng(seed).integers(10_000, 100_000, num_examples)
  rows = [example(encode, length, depth, int(k)) for k in keys[process_index::process_count]]
  real = len(rows)
  per_process = -(-num_examples // (process_count * batch_size)) * batch_size
  rows += [rows[0]] * (per_process - real)  # Every process: the same batch count.
  return [pipelines.unpacked_batch(rows[s:s + batch_size], length,
                                   max(0, min(real - s, batch_size)))
          for s in range(0, per_process, batch_size)]
