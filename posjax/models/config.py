"""One frozen model config, built from ``config.model``."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

from posjax.models.frozen import freeze as _freeze, thaw as _thaw

KINDS = ('decoder', 'encoder_classifier', 'matcher')
ATTENTIONS = ('auto', 'dense', 'blockwise', 'flash', 'cudnn', 'splash', 'pallas')
NORMS = ('layernorm', 'rmsnorm')
POOLINGS = ('cls', 'mean')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Rematerialisation of each block: nothing saved ('full') or only the matmuls
# without batch dimensions, i.e. the weight projections ('dots'); see
# posjax/models/transformer.py REMAT_POLICIES.
REMATS = ('none', 'full', 'dots')
SINKS = ('none', 'learned')
# Attention weights: softmax, or stick-breaking (Tan et al. 2025; dense / blockwise only).
NORMALIZERS = ('softmax', 'stick_breaking')


def _check(ok: bool, field: str, allowed: str, value: Any):
  if not ok:
    raise ValueError(f'model.{field}: got {value!r}; allowed: {allowed}')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every knob of the models; variants are made with ``.replace(...)``."""
  kind: str = 'decoder'
  vocab_size: int = 260
  num_layers: int = 2
  num_heads: int = 4
  model_dim: int = 128
  mlp_dim: int = 512
  max_len: int = 512          # the longest training length
  dropout_rate: float = 0.0
  dtype: str = 'float32'      # activation dtype; parameters stay float32
  norm: str = 'layernorm'
  tied_embedding: bool = True
  posenc: str = 'rope'
  posenc_args: tuple = ()     # sorted (key, value) pairs: hashable for jit
  attention: str = 'auto'     # auto: the platform's fused kernel, else dense / flash
  block_size: Any = 'auto'    # tiles of blockwise / flash / pallas: 'auto' (kernels.tile_sizes) or an int
  randomized_positions: bool = False
  max_random_position: int = 2048
  num_classes: int = 2        # encoder_classifier / matcher
  pooling: str = 'mean'
  pad_id: int = 0
  remat: str = 'none'         # rematerialise each block: none, full, dots
  scan_layers: bool = True    # the layer stack as one nn.scan (params stacked on 'layers')
  qk_norm: str = 'none'       # none, rms (before the position transform), l2 (after it)
  qk_norm_scale: str = 'learned'  # learned (per channel) or fixed
  temperature: str = 'none'   # per-query logit temperature: none, logn, llama4, ssmax
  temperature_args: tuple = ()  # sorted (key, value) pairs (models/temperature.py)
  window: int = 0             # sliding window in tokens (0: none; kernels/span.py)
  chunk: int = 0              # Llama 4's chunked attention, chunk length (0: none)
  sinks: str = 'none'         # 'learned': one learned logit per head in the softmax (gpt-oss)
  sink_tokens: int = 0        # StreamingLLM: keys at positions < k always visible (per document)
  layer_pattern: tuple = ()   # per-layer overrides, repeated (models/layer_pattern.py)
  normalizer: str = 'softmax'  # softmax, stick_breaking (kernels/stick_breaking.py)
  attend_current: bool = False  # stick_breaking: the query's own key breaks the stick too

  def __post_init__(self):
    _check(self.kind in KINDS, 'kind', ', '.join(KINDS), self.kind)
    _check(self.attention in ATTENTIONS, 'attention', ', '.join(ATTENTIONS), self.attention)
    _check(self.norm in NORMS, 'norm', ', '.join(NORMS), self.norm)
    _check(self.pooling in POOLINGS, 'pooling', ', '.join(POOLINGS), self.pooling)
    _check(self.dtype in DTYPES, 'dtype', ', '.join(DTYPES), self.dtype)
    _check(self.remat in REMATS, 'remat', ', '.join(REMATS), self.remat)
    _check(isinstance(self.scan_layers, bool), 'scan_layers', 'True, False', self.scan_layers)
    self._check_temperature()
    if isinstance(self.block_size, str) and self.block_size.isdigit():
      object.__setattr__(self, 'block_size', int(self.block_size))
    _check(self.block_size == 'auto' or (isinstance(self.block_size, int) and
                                         self.block_size > 0),
           'block_size', "'auto' or a positive integer", self.block_size)
    for f in ('window', 'chunk', 'sink_tokens'):
      _check(isinstance(getattr(self, f), int) and getattr(self, f) >= 0, f,
             'an integer >= 0 (0: off)', getattr(self, f))
    _check(self.sinks in SINKS, 'sinks', ', '.join(SINKS), self.sinks)
    self._check_normalizer()
    for f in ('vocab_size', 'num_layers', 'num_heads', 'model_dim', 'mlp_dim',
              'max_len', 'max_random_position', 'num_classes'):
      _check(getattr(self, f) > 0, f, 'a positive integer', getattr(self, f))
    _check(0.0 <= self.dropout_rate < 1.0, 'dropout_rate', '[0, 1)', self.dropout_rate)
    _check(self.model_dim % self.num_heads == 0, 'num_heads',
           f'a divisor of model_dim={self.model_dim}', self.num_heads)
    if self.randomized_positions:
      _check(self.max_random_position >= self.max_len, 'max_random_position',
             f'>= max_len={self.max_len}', self.max_random_position)
    self.make_encoding()  # Validates posenc and posenc_args eagerly.
    self.layer_configs()  # Validates layer_pattern.

  def _check_normalizer(self):
    _check(self.normalizer in NORMALIZERS, 'normalizer', ', '.join(NORMALIZERS), self.normalizer)
    if self.normalizer == 'stick_breaking':
      _check(self.attention in ('auto', 'dense', 'blockwise', 'flash'), 'attention',
             'auto, dense, blockwise, flash with normalizer=stick_breaking', self.attention)
      _check(self.sinks == 'none', 'sinks', "'none' with normalizer=stick_breaking (the "
             'weights need not sum to 1 already)', self.sinks)
    else:
      _check(not self.attend_current, 'attend_current', 'False with normalizer=softmax (a '
             "softmax always attends the query's own key)", self.attend_current)

  def _check_temperature(self):
    from posjax.models import temperature as t
    _check(self.qk_norm in t.QK_NORMS, 'qk_norm', ', '.join(t.QK_NORMS), self.qk_norm)
    _check(self.qk_norm_scale in t.QK_NORM_SCALES, 'qk_norm_scale',
           ', '.join(t.QK_NORM_SCALES), self.qk_norm_scale)
    _check(self.temperature in t.TEMPERATURES, 'temperature', ', '.join(t.TEMPERATURES),
           self.temperature)
    allowed = t.TEMPERATURE_ARGS[self.temperature]
    for key, value in self.temperature_args:
      _check(key in allowed, f'temperature_args.{key}',
             f'{", ".join(allowed) or "nothing"} for temperature={self.temperature}', value)
      _check(isinstance(value, (int, float)) and value > 0, f'temperature_args.{key}',
             'a number > 0', value)

  def temperature_kwargs(self) -> dict[str, Any]:
    return dict(self.temperature_args)

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> 'ModelConfig':
    cfg = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
      raise ValueError(f'model: unknown field(s) {", ".join(unknown)}; '
                       f'allowed: {", ".join(sorted(fields))}')
    for key in _DICT_FIELDS:
      args = cfg.get(key) or {}
      cfg[key] = _freeze(dict(args.to_dict() if hasattr(args, 'to_dict') else args))
    cfg['layer_pattern'] = _freeze_pattern(cfg.get('layer_pattern') or ())
    return cls(**cfg)

  def replace(self, **kw) -> 'ModelConfig':
    for key in _DICT_FIELDS:
      if key in kw and isinstance(kw[key], Mapping):
        kw[key] = _freeze(dict(kw[key]))
    if 'layer_pattern' in kw:
      kw['layer_pattern'] = _freeze_pattern(kw['layer_pattern'])
    return dataclasses.replace(self, **kw)

  @property
  def head_dim(self) -> int:
    return self.model_dim // self.num_heads

  @property
  def causal(self) -> bool:
    return self.kind == 'decoder'

  @property
  def span(self):
    """Which key slots each query may see (``kernels.span.Span``)."""
    from posjax.models.kernels.span import Span
    # Stick-breaking breaks the stick over the keys before the query (Tan et al. 2025;
    # ``attend_current``: its own key too, the kernel's option); softmax always has it.
    exclude = self.normalizer == 'stick_breaking' and not self.attend_current
    return Span(self.causal, self.window, self.chunk, self.sink_tokens, exclude_current=exclude)

  def layer_configs(self) -> tuple:
    """The per-layer configs of one period of ``layer_pattern`` ((self,) without one)."""
    from posjax.models import layer_pattern
    return layer_pattern.layer_configs(self)

  @property
  def uses_position_rows(self) -> bool:
    """Some layer's encoding reads position rows ``[3, B, L]`` (``position_rows = 3``)."""
    return any(layer.encoding_class.position_rows == 3 for layer in self.layer_configs())

  @property
  def activation_dtype(self):
    return DTYPES[self.dtype]

  def posenc_kwargs(self) -> dict[str, Any]:
    return {k: _thaw(v) for k, v in self.posenc_args}

  @property
  def encoding_class(self):
    from posjax import encodings
    return encodings.get(self.posenc)

  def make_encoding(self, name: str | None = None, **linen_kw):
    """A fresh (unbound) encoding module for this geometry.

    ``linen_kw`` goes to the linen constructor (``parent=None``: not a child of
    the module being defined, e.g. to ``.bind`` it to given variables).
    """
    from posjax import encodings
    return encodings.make(
        self.posenc, self.posenc_kwargs(), name=name, **linen_kw, num_heads=self.num_heads,
        head_dim=self.head_dim, model_dim=self.model_dim,
        max_len=self.max_random_position if self.randomized_positions else self.max_len,
        causal=self.causal)


_DICT_FIELDS = ('posenc_args', 'temperature_args')  # Frozen to sorted pairs: hashable.


def _freeze_pattern(pattern):
  """``layer_pattern`` as a tuple of frozen dicts (a dict entry frozen; others
  kept, for ``layer_pattern`` to name)."""
  if hasattr(pattern, 'to_dict') or isinstance(pattern, Mapping):
    raise ValueError(f'model.layer_pattern: got {pattern!r}; allowed: a list of dicts')
  return tuple(_freeze(e) if isinstance(e, Mapping) or hasattr(e, 'to_dict') else e
               for e in pattern)
