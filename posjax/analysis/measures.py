"""Looking inside encodings and trained runs (notebooks, ``posjax.analysis.plots``).

A *run* is what ``posjax.workdir.restore.load_for_analysis(workdir)`` returns:
``(config, params, step)`` on the CPU. Every function takes explicit int token
arrays ``[B, L]`` and returns numpy arrays:

  attention_weights(run, tokens)        ``[layers, B, H, L, L]`` softmax probabilities
  loss_by_position(run, windows)        ``[L]`` mean next-token loss at each position
  attention_distance(run, tokens)       ``[layers, H, L]`` mean |i - j| under p_ij
  attention_entropy(run, tokens)        ``[layers, H, L]`` entropy of p_i. (nats)
  bias_by_distance(encoding, d)         ``[H, len(d)]`` additive logit bias at distance d
  rope_wavelengths(dim, base, scaling)  ``[dim/2]`` wavelength of each rotary pair
  rope_score_by_offset(dim, offsets)    mean q . R(m) q over random q: the long-range decay

Attention probabilities are captured from the model itself (``sow`` into the
``intermediates`` collection inside ``posjax.models.attention``), evaluated with
``attention='dense'``: blockwise attention never forms the ``[L, S]`` matrix and
equals dense in values (``tests/test_models.py``), so a blockwise run is analysed
with the same parameters through the dense path.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from posjax import encodings, models

_LAYER = re.compile(r'layer_(\d+)')


def model_config(run, **replace) -> models.ModelConfig:
  """The run's ModelConfig (``replace``: fields to change, e.g. attention)."""
  return models.ModelConfig.from_config(run.config.model).replace(**replace)


@functools.lru_cache(maxsize=16)
def _apply(mcfg: models.ModelConfig, capture: bool):
  model = models.build(mcfg)
  def run(params, tokens, positions):
    kwargs = {'positions': positions} if mcfg.kind == 'decoder' else {}
    if not capture:
      return model.apply({'params': params}, tokens, **kwargs), None
    out, state = model.apply({'params': params}, tokens, **kwargs, mutable=['intermediates'])
    return out, state['intermediates']
  return jax.jit(run)


def _positions(tokens) -> jax.Array:
  b, l = np.shape(tokens)
  return jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))


def _probs_by_layer(intermediates) -> np.ndarray:
  """``[layers, B, H, L, S]`` from the sown ``attention_probs`` (plain or scanned)."""
  found = []
  for path, leaf in jax.tree.leaves_with_path(intermediates):
    keys = jax.tree_util.keystr(path, simple=True, separator='/')
    if 'attention_probs' in keys:
      m = _LAYER.search(keys)
      found.append((int(m.group(1)) if m else 0, np.asarray(leaf)))
  if not found:
    raise ValueError('attention_weights: no attention probabilities were captured')
  found.sort(key=lambda x: x[0])
  stacked = [x[None] if x.ndim == 4 else x for _, x in found]  # A scan stacks layers.
  return np.concatenate(stacked, 0)


def attention_weights(run, tokens) -> np.ndarray:
  """Softmax probabilities ``[layers, B, H, L, L]`` (float32) of every head."""
  mcfg = model_config(run, attention='dense')
  tokens = jnp.asarray(tokens, jnp.int32)
  _, inter = _apply(mcfg, True)(run.params, tokens, _positions(tokens))
  return _probs_by_layer(inter)


def loss_by_position(run, windows) -> np.ndarray:
  """Mean next-token loss ``[L]`` at each position of ``windows`` ``[N, L + 1]``
  (inputs ``w[:, :-1]``, targets ``w[:, 1:]``, positions 0..L-1): where the loss
  starts to rise past the training length is the extrapolation diagnostic."""
  windows = np.asarray(windows, np.int32)
  inputs, targets = jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])
  logits, _ = _apply(model_config(run), False)(run.params, inputs, _positions(inputs))
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return np.asarray(losses.mean(0))


def _distances(length: int) -> np.ndarray:
  i = np.arange(length)
  return np.abs(i[:, None] - i[None, :]).astype(np.float32)


def attention_distance(run, tokens) -> np.ndarray:
  """``[layers, H, L]``: sum_j p_ij |i - j|, averaged over the batch."""
  p = attention_weights(run, tokens)
  return (p * _distances(p.shape[-1])).sum(-1).mean(1)


def attention_entropy(run, tokens) -> np.ndarray:
  """``[layers, H, L]``: -sum_j p_ij log p_ij (nats), averaged over the batch."""
  p = attention_weights(run, tokens).astype(np.float64)
  return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1).mean(1)


def encoding_params(run, layer: int = 0) -> tuple[Any, dict]:
  """The run's encoding module (unbound) and its parameters (model-level for
  shared encodings, else those of ``layer``)."""
  mcfg = model_config(run)
  tower = next(iter(run.params))  # 'decoder' or 'encoder'
  if mcfg.encoding_class.shared_across_layers:
    params = run.params[tower].get('posenc', {})
  elif mcfg.scan_layers:
    stacked = run.params[tower]['layers']['attention'].get('posenc', {})
    params = jax.tree.map(lambda x: x[layer], stacked)
  else:
    params = run.params[tower][f'layer_{layer}']['attention'].get('posenc', {})
  return mcfg.make_encoding(), params


def bias_by_distance(encoding, distances, *, params: Mapping | None = None,
                     query_position: int | None = None, layer: int = 0,
                     **geometry) -> np.ndarray:
  """Each head's additive logit bias ``[H, len(distances)]`` for a key
  ``distance`` positions before a query at ``query_position`` (default: the
  largest distance, so every key exists).

  ``encoding`` is a run (its learned values; ``layer`` for per-layer ones), an
  Encoding module, or a registered name built with ``geometry`` (num_heads,
  max_len, ...) and freshly initialised ``params`` when it has any. Only
  encodings whose bias is a function of positions (``bias_from_positions``) have
  such a curve; others (Shaw, Transformer-XL, CoPE) depend on q and k.
  """
  if hasattr(encoding, 'params') and hasattr(encoding, 'config'):
    encoding, params = encoding_params(encoding, layer)
  elif isinstance(encoding, str):
    encoding = encodings.make(encoding, geometry.pop('args', None), **geometry)
  if not type(encoding).bias_from_positions:
    allowed = [n for n in encodings.names() if encodings.get(n).bias_from_positions]
    raise ValueError(f'bias_by_distance: {encoding.registry_name} has no bias that is a '
                     f'function of distance; allowed: {", ".join(allowed)}')
  d = np.asarray(distances, np.int32)
  qp = int(d.max()) if query_position is None else int(query_position)
  qpos, kpos = jnp.full((1, 1), qp, jnp.int32), jnp.asarray(qp - d, jnp.int32)[None]
  mask = jnp.ones((1, 1, d.size), bool)
  if params is None:
    params = encoding.init(jax.random.key(0), None, None, qpos, kpos, mask, None,
                           method='bias').get('params', {})
  bias, _ = encoding.apply({'params': params}, None, None, qpos, kpos, mask, None,
                           method='bias')
  return np.asarray(bias[0, :, 0, :])


def rope_wavelengths(dim: int, base: float = 10000.0,
                     scaling: Mapping[str, Any] | None = None) -> np.ndarray:
  """``2 pi / theta_i`` of each rotary pair (positions per full turn)."""
  inv_freq, _ = encodings.rope_inv_freq(dim, base=base, scaling=scaling)
  return 2 * np.pi / np.asarray(inv_freq, np.float64)


def rope_score_by_offset(dim: int, offsets, *, base: float = 10000.0,
                         scaling: Mapping[str, Any] | None = None, num_samples: int = 512,
                         seed: int = 0, posenc: str = 'rope', **args) -> np.ndarray:
  """Mean ``q(m) . k(0)`` over ``num_samples`` random unit-variance q = k, rotated
  by the encoding at positions m and 0 and scaled by 1/sqrt(dim): the long-range
  decay of RoPE (Su et al. 2021, sec. 3.4.3) and xPos (Sun et al. 2022)."""
  offsets = np.asarray(offsets, np.int32)
  if posenc == 'rope':
    args = dict(args, base=base, scaling=scaling)
  enc = encodings.make(posenc, args, num_heads=1, head_dim=dim, model_dim=dim,
                       max_len=int(offsets.max()) + 1, causal=True)
  x = jax.random.normal(jax.random.key(seed), (num_samples, 1, 1, dim), jnp.float32)
  q = jnp.broadcast_to(x, (num_samples, offsets.size, 1, dim))
  qpos = jnp.broadcast_to(jnp.asarray(offsets)[None], (num_samples, offsets.size))
  zero = jnp.zeros((num_samples, 1), jnp.int32)
  q_rot, k_rot = enc.apply({}, q, x, qpos, zero, method='qk')
  return np.asarray(jnp.einsum('nlhk,nshk->nl', q_rot, k_rot).mean(0) / np.sqrt(dim))
