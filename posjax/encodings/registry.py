"""One registry mapping a config name to an encoding class."""
from __future__ import annotations

from typing import Any, Mapping

from posjax.encodings.base import BIAS, EMBED, HOOK_HELPERS, QK, TOKENS, VALUES, Encoding

_REGISTRY: dict[str, type[Encoding]] = {}
_HOOKS = (EMBED, TOKENS, QK, BIAS, VALUES)  # Each the name of its method.


def overridden_hooks(cls: type[Encoding]) -> set[str]:
  """The hook methods (and hook helpers) ``cls`` defines itself or inherits
  from a subclass of ``Encoding``."""
  return {h for h in (*_HOOKS, *HOOK_HELPERS) if getattr(cls, h) is not getattr(Encoding, h)}


def _check_contract(name: str, cls: type[Encoding]) -> None:
  """``acts_at`` names exactly the overridden hooks; ``embed`` needs a shared
  instance (the model calls it once, at the input)."""
  hooks = overridden_hooks(cls)
  declared = set(cls.acts_at)
  if declared != hooks & set(_HOOKS):
    raise ValueError(f'encoding {name!r}: acts_at: got {sorted(declared)}; allowed: the '
                     f'hooks it overrides, {sorted(hooks & set(_HOOKS))}')
  for helper, hook in HOOK_HELPERS.items():
    if helper in hooks and hook not in declared:
      raise ValueError(f'encoding {name!r}: overrides {helper} without {hook}; allowed: '
                       f'{helper} only with {hook}')
  if cls.position_rows not in (1, 3) or (cls.position_rows == 3 and declared - {EMBED, QK}):
    raise ValueError(f'encoding {name!r}: position_rows: got {cls.position_rows} with acts_at '
                     f'{sorted(declared)}; allowed: 1, or 3 acting only at {EMBED}/{QK}')
  if EMBED in declared and not cls.shared_across_layers:
    raise ValueError(f'encoding {name!r}: shared_across_layers: got False with '
                     f'acts_at {EMBED!r}; allowed: True (embed acts once, on the input)')


def register(name: str):
  """Class decorator: ``@register('alibi')``; checks the hook contract."""
  def wrap(cls):
    if name in _REGISTRY:
      raise ValueError(f'encoding {name!r} registered twice')
    _check_contract(name, cls)
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
