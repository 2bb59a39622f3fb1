"""Config values as hashable tuples (jit static arguments) and back.

Dicts become sorted ``(key, value)`` pairs, lists ``('__list__', ...)``.
"""
from __future__ import annotations

from typing import Mapping


def freeze(x):
  if isinstance(x, Mapping) or hasattr(x, 'to_dict'):
    x = x.to_dict() if hasattr(x, 'to_dict') else x
    return tuple(sorted((k, freeze(v)) for k, v in x.items()))
  if isinstance(x, list):
    return ('__list__',) + tuple(freeze(v) for v in x)
  return x


def thaw(x):
  if isinstance(x, tuple) and x and x[0] == '__list__':
    return [thaw(v) for v in x[1:]]
  pairs = all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in x) \
      if isinstance(x, tuple) else False
  if x and pairs:
    return {k: thaw(v) for k, v in x}
  return x
