"""Hugging Face model configs -> posjax ``rope`` arguments (``rope_args_from_hf``).

Reads ``rope_theta``, ``rope_scaling`` or ``rope_parameters`` (``rope_type`` or
the legacy ``type``: default, linear, dynamic, yarn, llama3, longrope,
proportional), ``partial_rotary_factor``, the head dim (``head_dim``, else
``hidden_size / num_attention_heads``; ``qk_rope_head_dim`` for DeepSeek's MLA,
whose rotary part is all posjax reproduces), ``max_position_embeddings`` and
``original_max_position_embeddings``, as ``transformers.modeling_rope_utils``
does, so that ``rope_inv_freq(rotary_dim, base=..., scaling=...)`` gives that
model's inverse frequencies and attention factor. The posjax model must have the
same head dim (``model_dim / num_heads``); ``rotary_dim`` says what it rotates.
"""
from __future__ import annotations

from typing import Any, Mapping

HF_ROPE_TYPES = ('default', 'linear', 'dynamic', 'yarn', 'llama3', 'longrope', 'proportional')
_YARN_KEYS = {'beta_fast': 'beta_fast', 'beta_slow': 'beta_slow', 'mscale': 'mscale',
              'mscale_all_dim': 'mscale_all_dim', 'attention_factor': 'attention_factor',
              'truncate': 'truncate'}


def _head_dim(config: Mapping[str, Any]) -> int:
  for key in ('qk_rope_head_dim', 'head_dim'):
    if config.get(key):
      return int(config[key])
  return int(config['hidden_size']) // int(config['num_attention_heads'])


def _parameters(config: Mapping[str, Any]) -> dict:
  params = dict(config.get('rope_parameters') or config.get('rope_scaling') or {})
  if params and all(isinstance(v, Mapping) for v in params.values()):
    raise ValueError('rope_parameters: got one entry per layer type '
                     f'({", ".join(params)}); allowed: one set for every layer '
                     '(per-layer RoPE needs model.layer_pattern, which posjax does not have yet)')
  return params


def _scaling(kind: str, p: Mapping[str, Any], config: Mapping[str, Any]) -> dict | None:
  original = p.get('original_max_position_embeddings',
                   config.get('original_max_position_embeddings'))
  if kind == 'default':
    return None
  if kind == 'linear':
    return {'type': 'linear', 'factor': p['factor']}
  if kind == 'dynamic':  # HF: the original length is max_position_embeddings.
    return {'type': 'dynamic', 'factor': p['factor'],
            'original_max_position': config['max_position_embeddings']}
  if kind == 'yarn':
    s = {'type': 'yarn', 'factor': p['factor'],
         'original_max_position': original or config['max_position_embeddings']}
    return {**s, **{ours: p[hf] for hf, ours in _YARN_KEYS.items() if p.get(hf) is not None}}
  if kind == 'llama3':
    return {'type': 'llama3', 'factor': p['factor'], 'low_freq_factor': p['low_freq_factor'],
            'high_freq_factor': p['high_freq_factor'], 'original_max_position': original}
  if kind == 'longrope':
    s = {'type': 'longrope', 'short_factor': tuple(p['short_factor']),
         'long_factor': tuple(p['long_factor']), 'original_max_position': original,
         'factor': p.get('factor') or config['max_position_embeddings'] / original}
    return {**s, **({'attention_factor': p['attention_factor']}
                    if p.get('attention_factor') else {})}
  return {'type': 'proportional', 'fraction': p['fraction']}


def rope_args_from_hf(config: Mapping[str, Any]) -> dict:
  """``model.posenc_args`` of ``rope`` reproducing a Hugging Face config's RoPE:
  ``base``, ``scaling`` (absent for 'default'), ``rotary_fraction`` (when
  partial), plus ``head_dim`` (the head dim the model must have), to pop before
  use: ``args = rope_args_from_hf(hf); head_dim = args.pop('head_dim')``."""
  params = _parameters(config)
  kind = params.get('rope_type', params.get('type', 'default'))
  if kind not in HF_ROPE_TYPES:
    raise ValueError(f'rope_type: got {kind!r}; allowed: {", ".join(HF_ROPE_TYPES)}')
  args = {'base': float(params.get('rope_theta', config.get('rope_theta', 10000.0))),
          'head_dim': _head_dim(config)}
  fraction = params.get('partial_rotary_factor', config.get('partial_rotary_factor', 1.0))
  if fraction != 1.0:
    args['rotary_fraction'] = float(fraction)
  scaling = _scaling(kind, params, config)
  if scaling is not None:
    args['scaling'] = scaling
  return args
