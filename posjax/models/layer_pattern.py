"""Per-layer schedules: ``model.layer_pattern``, overrides repeated over the layers.

``layer_pattern`` is a tuple of dicts, layer i taking entry ``i % len(pattern)``.
Each may set any of ``OVERRIDES``; the rest comes from the model's own fields.
``posenc_args`` are merged onto the model's when the layer keeps the model's
encoding, and replace them when it names another one. A layer may not switch to
an encoding that is one model-level instance (``shared_across_layers`` with
parameters or an embedding: T5, learned, sinusoidal): set it as ``model.posenc``.

With ``scan_layers`` the stack is scanned over periods of the pattern (each
period one scanned step holding its ``len(pattern)`` blocks), so the pattern's
length must divide ``num_layers``.

The presets of recent models' schedules are ``posjax.config_lib.ARCHS``
(``configs/lm.py:arch=...``).
"""
from __future__ import annotations

from typing import Any

OVERRIDES = ('posenc', 'posenc_args', 'window', 'chunk', 'temperature', 'temperature_args')


def _error(field: str, value: Any, allowed: str) -> ValueError:
  return ValueError(f'model.layer_pattern{field}: got {value!r}; allowed: {allowed}')


def layer_configs(cfg) -> tuple:
  """One ``ModelConfig`` per entry of ``cfg.layer_pattern`` (``(cfg,)`` without one)."""
  from posjax import encodings
  from posjax.models.frozen import thaw
  if not cfg.layer_pattern:
    return (cfg,)
  out = []
  for n, entry in enumerate(cfg.layer_pattern):
    entry = (thaw(entry) or {}) if isinstance(entry, tuple) else entry
    if not isinstance(entry, dict):
      raise _error(f'[{n}]', entry, 'a dict of ' + ', '.join(OVERRIDES))
    unknown = sorted(set(entry) - set(OVERRIDES))
    if unknown:
      raise _error(f'[{n}]', unknown[0], ', '.join(OVERRIDES))
    kw = dict(entry, layer_pattern=())
    if entry.get('posenc', cfg.posenc) == cfg.posenc:
      kw['posenc_args'] = {**cfg.posenc_kwargs(), **entry.get('posenc_args', {})}
    if 'temperature' in entry and 'temperature_args' not in entry:
      kw['temperature_args'] = {}
    try:
      layer = cfg.replace(**kw)
    except ValueError as e:
      raise ValueError(f'model.layer_pattern[{n}]: {e}') from None
    cls = layer.encoding_class
    if layer.posenc != cfg.posenc and cls.shared_across_layers and (
        cls.has_params or encodings.EMBED in cls.acts_at):
      raise _error(f'[{n}].posenc', layer.posenc, 'an encoding with per-layer instances or '
                   'none (a model-level one, as this, only as model.posenc)')
    out.append(layer)
  if cfg.scan_layers and cfg.num_layers % len(out):
    raise _error('', f'{len(out)} entries',
                 f'a period that divides num_layers={cfg.num_layers} when scan_layers '
                 '(or model.scan_layers=False)')
  return tuple(out)
