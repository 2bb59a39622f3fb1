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
M-RoPE configs (Qwen2-VL's ``type: mrope``, or any with ``mrope_section``; Qwen3-VL's
``mrope_interleaved``) add ``mrope_section`` and ``interleaved``: arguments of
``posenc='mrope'``.
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


def _per_layer_type(config: Mapping[str, Any]) -> bool:
  params = config.get('rope_parameters') or {}
  return bool(params) and all(isinstance(v, Mapping) for v in params.values())


def _parameters(config: Mapping[str, Any]) -> dict:
  if _per_layer_type(config):
    raise ValueError('rope_parameters: got one entry per layer type '
                     f'({", ".join(config["rope_parameters"])}); allowed: one set for every '
                     'layer (per-layer configs: layer_pattern_from_hf)')
  return dict(config.get('rope_parameters') or config.get('rope_scaling') or {})


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
  """``model.posenc_args`` of ``rope`` (``mrope`` when it has ``mrope_section``)
  reproducing a Hugging Face config's RoPE: ``base``, ``scaling`` (absent for
  'default'), ``rotary_fraction`` (when partial), plus ``head_dim`` (the head dim the model must have), to pop before
  use: ``args = rope_args_from_hf(hf); head_dim = args.pop('head_dim')``."""
  params = _parameters(config)
  kind = params.get('rope_type', params.get('type', 'default'))
  # Phi-3's first configs and Qwen2-VL's, as HF reads them.
  kind = {'su': 'longrope', 'mrope': 'default'}.get(kind, kind)
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
  if params.get('mrope_section'):
    args.update(mrope_section=tuple(int(s) for s in params['mrope_section']),
                interleaved=bool(params.get('mrope_interleaved', False)))
  return args


# HF layer type -> the posjax field its window size goes to, and the HF key of the size.
_LOCAL = {'sliding_attention': ('window', 'sliding_window'),
          'chunked_attention': ('chunk', 'attention_chunk_size')}


def _layer(config: Mapping[str, Any], kind: str, rope: bool) -> dict:
  """One layer's overrides: RoPE (or NoPE) and its window or chunk."""
  if kind not in _LOCAL and kind != 'full_attention':
    raise ValueError(f'layer_types: got {kind!r}; allowed: full_attention, '
                     + ', '.join(_LOCAL))
  out: dict[str, Any] = {'posenc': 'none'}
  if rope:
    params = config.get('rope_parameters') or {}
    one = dict(config, rope_parameters=params[kind]) if _per_layer_type(config) else config
    args = rope_args_from_hf(one)
    args.pop('head_dim')
    out = {'posenc': 'rope', 'posenc_args': args}
  elif config.get('attn_temperature_tuning'):  # Llama 4's NoPE layers.
    out.update(temperature='llama4', temperature_args={
        'floor_scale': float(config.get('floor_scale', 8192)),
        'attn_scale': float(config.get('attn_scale', 0.1))})
  if kind in _LOCAL and rope:  # (Llama 4: its NoPE layers attend globally.)
    field, key = _LOCAL[kind]
    out[field] = int(config[key])
  return out


def layer_pattern_from_hf(config: Mapping[str, Any]) -> dict:
  """``model`` fields reproducing a Hugging Face config's per-layer position
  machinery: ``layer_pattern`` (the shortest period of ``layer_types`` and of
  Llama 4's ``no_rope_layers`` that divides the layer count: each entry RoPE with
  that layer type's ``rope_parameters`` or NoPE, its ``sliding_window`` or
  ``attention_chunk_size``), ``posenc`` 'rope', and ``head_dim`` (the head dim the
  model must have; pop it). Gemma 3, gpt-oss, Llama 4, Qwen 3 style configs."""
  n = int(config['num_hidden_layers'])
  kinds = list(config.get('layer_types') or (
      ['chunked_attention'] * n if config.get('attention_chunk_size') else ['full_attention'] * n))
  ropes = [bool(r) for r in config.get('no_rope_layers') or [1] * n]  # (1: RoPE, HF's way.)
  if len(kinds) != n or len(ropes) != n:
    raise ValueError(f'layer_types: got {len(kinds)} entries and no_rope_layers '
                     f'{len(ropes)}; allowed: num_hidden_layers={n} each')
  layers = list(zip(kinds, ropes))
  period = next(p for p in range(1, n + 1)
                if n % p == 0 and all(layers[i] == layers[i % p] for i in range(n)))
  pattern = tuple(_layer(config, k, r) for k, r in layers[:period])
  return {'posenc': 'rope', 'head_dim': _head_dim(config), 'layer_pattern': pattern}
