"""Pre-norm transformers: a causal LM, an encoder classifier and a two-tower matcher.

Positions are explicit ``[B, L]`` int arrays threaded through every layer; the
positional encoding is asked for its hooks (``embed`` at the input, the rest
inside attention). An encoding with ``position_rows = 3`` (M-RoPE, the 2D ones)
gets position rows ``[3, B, L]`` (temporal, height, width) instead: the
``position_rows`` argument (image data gives them), or three copies of the
positions (text). Encodings that are ``shared_across_layers`` (T5's table,
absolute tables) are one model-level instance whose variables every block
receives as an argument; the others get one instance per layer.

``cfg.remat`` rematerialises each block; ``cfg.scan_layers`` runs the stack as
one ``nn.scan`` with every per-layer variable (params, cache) stacked on a
leading axis named 'layers' (with a ``layer_pattern``: per period, the period's
blocks named ``layer_0 ...`` inside). Both give the plain model's values and gradients;
``stack_layers`` / ``unstack_layers`` convert between the two parameter layouts.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from posjax.encodings.base import equal_rows
from posjax.encodings.randomized import randomized_positions
from posjax.models.attention import Attention
from posjax.models.config import ModelConfig

# Saved residuals per ``cfg.remat`` (None: nothing saved, all recomputed).
REMAT_POLICIES = {'full': None,
                  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
_LAYER = re.compile(r'layer_\d+')


def _norm(cfg: ModelConfig, name: str):
  scale = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if cfg.norm == 'rmsnorm':
    return nn.RMSNorm(dtype=cfg.activation_dtype, scale_init=scale, name=name)
  return nn.LayerNorm(dtype=cfg.activation_dtype, scale_init=scale, name=name,
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


class Block(nn.Module):
  """One pre-norm layer. ``shared`` holds the model-level encoding's variables
  (ignored unless the encoding is ``shared_across_layers``)."""
  cfg: ModelConfig
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, shared, pos, seg, rows):
    cfg = self.cfg
    if cfg.encoding_class.shared_across_layers and shared is not None:
      # Bound to the variables passed in (named, so Attention does not adopt
      # it): nn.scan broadcasts them instead of stacking them per layer.
      enc = cfg.make_encoding('shared', parent=None).bind(shared)
    else:
      enc = cfg.make_encoding('posenc')
    drop = nn.Dropout(cfg.dropout_rate, deterministic=not self.train)
    h = Attention(cfg, enc, name='attention')(_norm(cfg, 'pre_attention_norm')(x), pos, seg,
                                             rows, decode=self.decode)
    x = x + drop(h)
    h = _norm(cfg, 'pre_mlp_norm')(x)
    dense = lambda n, axes, name: nn.Dense(  # noqa: E731
        n, dtype=cfg.activation_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    h = dense(cfg.mlp_dim, ('embed', 'mlp'), 'mlp_in')(h)
    h = nn.with_logical_constraint(nn.gelu(h), ('batch', 'length', 'mlp'))
    x = x + drop(dense(cfg.model_dim, ('mlp', 'embed'), 'mlp_out')(h))
    return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class Period(nn.Module):
  """One period of ``model.layer_pattern``: its blocks, one per entry (scanned
  as one step of the stack)."""
  cfg: ModelConfig
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, shared, pos, seg, rows):
    for p, layer in enumerate(self.cfg.layer_configs()):
      x = _block(self.cfg)(layer, train=self.train, decode=self.decode,
                           name=f'layer_{p}')(x, shared, pos, seg, rows)
    return x


def _block(cfg: ModelConfig):
  """``Block``, rematerialised per ``cfg.remat``."""
  if cfg.remat == 'none':
    return Block
  return nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)


def _scan_body(block, x, shared, pos, seg, rows):
  return block(x, shared, pos, seg, rows), None


def _layer_stack(cfg: ModelConfig, x, shared, pos, seg, rows, *, train: bool, decode: bool):
  """The ``num_layers`` blocks, plain / rematerialised / scanned per ``cfg``; with
  a ``layer_pattern``, layer i is built from entry ``i % len(pattern)`` and the
  scan steps over periods of the pattern."""
  layers = cfg.layer_configs()
  if not cfg.scan_layers:
    for i in range(cfg.num_layers):
      x = _block(cfg)(layers[i % len(layers)], train=train, decode=decode,
                      name=f'layer_{i}')(x, shared, pos, seg, rows)
    return x
  step = (_block(cfg)(cfg, train=train, decode=decode, name='layers') if len(layers) == 1 else
          Period(cfg, train=train, decode=decode, name='layers'))
  scan = nn.scan(_scan_body, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0},
                 split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                 length=cfg.num_layers // len(layers),
                 metadata_params={nn.PARTITION_NAME: 'layers'})
  return scan(step, x, shared, pos, seg, rows)[0]


class Encoder(nn.Module):
  """Token embedding, absolute encoding, the layer stack and a final norm."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = nn.Embed(
        cfg.vocab_size, cfg.model_dim, dtype=cfg.activation_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ('vocab', 'embed')))
    shared = cfg.encoding_class.shared_across_layers
    self.posenc = cfg.make_encoding() if shared else None
    self.final_norm = _norm(cfg, 'final_norm')
    self.dropout = nn.Dropout(cfg.dropout_rate)

  @nn.compact
  def __call__(self, tokens_BxL, positions_BxL=None, segment_ids_BxL=None, *,
               position_rows=None, train: bool = False, decode: bool = False):
    """``position_rows`` ``[3, B, L]``: for encodings with ``position_rows = 3``
    (not randomized); by default three copies of the (randomized) positions."""
    cfg = self.cfg
    B, L = tokens_BxL.shape
    pos = (jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
           if positions_BxL is None else positions_BxL.astype(jnp.int32))
    seg = (jnp.ones((B, L), jnp.int32) if segment_ids_BxL is None
           else segment_ids_BxL.astype(jnp.int32))
    if cfg.randomized_positions and self.has_rng('positions') and not decode:
      pos = randomized_positions(self.make_rng('positions'), pos, cfg.max_random_position, seg)
    rows = None
    if cfg.uses_position_rows:
      rows = (equal_rows(pos) if position_rows is None else
              jnp.asarray(position_rows, jnp.int32).reshape(3, B, L))
    x = self.embedding(tokens_BxL)
    shared = None
    if self.posenc is not None:  # Only shared encodings act on the embedding.
      x = self.posenc.embed(x, rows if cfg.encoding_class.position_rows == 3 else pos)  # Also runs its setup: its params exist now.
      shared = self.posenc.variables
    x = x.astype(cfg.activation_dtype)
    x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
    x = self.dropout(x, deterministic=not train)
    x = _layer_stack(cfg, x, shared, pos, seg, rows, train=train, decode=decode)
    return self.final_norm(x)

  def logits(self, x_BxLxD):
    """Tied output embedding, scaled by 1/sqrt(D) as in flax's lm1b."""
    return self.embedding.attend(x_BxLxD.astype(jnp.float32)) / jnp.sqrt(self.cfg.model_dim)


class Decoder(nn.Module):
  """Causal language model: ``tokens [B, L] -> logits [B, L, V]`` float32."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL, positions=None, segment_ids=None, *, position_rows=None,
               train: bool = False, decode: bool = False):
    encoder = Encoder(self.cfg, name='decoder')
    x = encoder(tokens_BxL, positions, segment_ids, position_rows=position_rows, train=train,
                decode=decode)
    if self.cfg.tied_embedding:
      logits = encoder.logits(x)
    else:
      logits = nn.Dense(self.cfg.vocab_size, dtype=jnp.float32, name='unembed',
                        kernel_init=nn.with_logical_partitioning(
                            nn.initializers.lecun_normal(), ('embed', 'vocab')))(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))


def _pool(cfg: ModelConfig, x_BxLxD, tokens_BxL):
  if cfg.pooling == 'cls':
    return x_BxLxD[:, 0]
  keep = (tokens_BxL != cfg.pad_id)[..., None].astype(jnp.float32)
  return (x_BxLxD.astype(jnp.float32) * keep).sum(1) / jnp.maximum(keep.sum(1), 1.0)


def _padding_segments(cfg: ModelConfig, tokens_BxL, segment_ids):
  """Without explicit segments, padding forms its own segment (attends nothing real)."""
  if segment_ids is not None:
    return segment_ids
  return (tokens_BxL != cfg.pad_id).astype(jnp.int32)


class _Head(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, h):
    cfg = self.cfg
    dense = lambda n, axes, name: nn.Dense(  # noqa: E731
        n, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]))
    h = nn.gelu(dense(cfg.mlp_dim, ('embed', 'mlp'), 'hidden')(h))
    return dense(cfg.num_classes, ('mlp', 'classes'), 'classes')(h).astype(jnp.float32)


class EncoderClassifier(nn.Module):
  """Bidirectional encoder with CLS or mean pooling: ``[B, L] -> [B, C]``."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens_BxL, positions=None, segment_ids=None, *, position_rows=None,
               train: bool = False):
    seg = _padding_segments(self.cfg, tokens_BxL, segment_ids)
    x = Encoder(self.cfg, name='encoder')(tokens_BxL, positions, seg,
                                          position_rows=position_rows, train=train)
    return _Head(self.cfg, name='head')(_pool(self.cfg, x, tokens_BxL))


class Matcher(nn.Module):
  """Two towers sharing one encoder (LRA Retrieval): MLP over [u, v, u*v, u-v]."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens1_BxL, tokens2_BxL, *, train: bool = False):
    encoder = Encoder(self.cfg, name='encoder')
    u, v = (_pool(self.cfg, encoder(t, None, _padding_segments(self.cfg, t, None), train=train), t)
            for t in (tokens1_BxL, tokens2_BxL))
    return _Head(self.cfg, name='head')(jnp.concatenate([u, v, u * v, u - v], -1))


def build(cfg: ModelConfig) -> nn.Module:
  """The model for ``cfg.kind``."""
  return {'decoder': Decoder, 'encoder_classifier': EncoderClassifier,
          'matcher': Matcher}[cfg.kind](cfg)


def stack_layers(tree: Mapping[str, Any], period: int = 1) -> dict:
  """Plain layout (``layer_0 ... layer_{n-1}``) -> ``scan_layers`` layout.

  Works on unboxed params or cache trees (e.g. converting a checkpoint): every
  dict holding ``layer_i`` keys gets one ``layers`` entry stacked on axis 0; with
  a ``layer_pattern`` of ``period`` entries, ``layers`` holds ``layer_0 ..
  layer_{period-1}``, each stacked over the periods.
  """
  if not isinstance(tree, Mapping):
    return tree
  out = {k: stack_layers(v, period) for k, v in tree.items() if not _LAYER.fullmatch(k)}
  n = sum(1 for k in tree if _LAYER.fullmatch(k))
  if n:
    stack = lambda idx: jax.tree.map(lambda *xs: jnp.stack(xs),  # noqa: E731
                                     *(tree[f'layer_{i}'] for i in idx))
    out['layers'] = (stack(range(n)) if period == 1 else
                     {f'layer_{p}': stack(range(p, n, period)) for p in range(period)})
  return out


def unstack_layers(tree: Mapping[str, Any]) -> dict:
  """The inverse of ``stack_layers`` (the period read from the tree)."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: unstack_layers(v) for k, v in tree.items() if k != 'layers'}
  if 'layers' in tree:
    layers = tree['layers']
    period = sum(1 for k in layers if _LAYER.fullmatch(k)) if isinstance(layers, Mapping) else 0
    groups = [layers[f'layer_{p}'] for p in range(period)] if period else [layers]
    n = jax.tree.leaves(groups[0])[0].shape[0]
    for i in range(n * len(groups)):
      out[f'layer_{i}'] = jax.tree.map(lambda x: x[i // len(groups)], groups[i % len(groups)])
  return out
