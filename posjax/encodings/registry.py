"""One registry mapping a config name to an encoding class."""
from __future__ import annotations

from typing import Any, Mapping

from posjax.encodings.base import Encoding

_REGISTRY: dict[str, type[Encoding]] = {}


def register(name: str):
  """Class decorator: ``@register('alibi')``."""
  def wrap(cls):
    if name in _REGISTRY:
      raise ValueError(f'encoding {name!r} registered twice')
    _REGISTRY[name] = cls
    cls.registry_name = name
    return cls
  return wrap


def names() -> list[str]:
  """Registered encoding names, sorted."""
  return sorted(_REGISTRY)


def get(name: str) -> type[Encoding]:
  if name not in _REGISTRY:
    raise ValueError(f'model.posenc: unknown encoding {name!r}; allowed: '
                     f'{", ".join(names())}')
  return _REGISTRY[name]


def make(posenc: str, args: Mapping[str, Any] | None = None, **geometry) -> Encoding:
  """Builds encoding ``posenc`` with hyperparameters ``args`` and the attention
  geometry (num_heads, head_dim, model_dim, max_len, causal; optionally the
  linen ``name``)."""
  cls = get(posenc)
  args = dict(args or {})
  fields = set(cls.__dataclass_fields__) - {'parent', 'name'}
  unknown = sorted(set(args) - fields)
  if unknown:
    allowed = sorted(fields - set(Encoding.__dataclass_fields__))
    raise ValueError(f'model.posenc_args: unknown field(s) {", ".join(unknown)} '
                     f'for {posenc!r}; allowed: {", ".join(allowed) or "(none)"}')
  return cls(**geometry, **args)
