"""What every experiment config (configs/*.py) shares, light enough to load anywhere.

``parse_arg`` reads the big_vision-style config argument (``lm.py:posenc=alibi,
runlocal``) typed by its defaults; ``base_config`` holds the fields common to all
experiments; ``runlocal`` shrinks a config to minutes on a laptop CPU; ``lra`` and
``encoder_sweep`` are the LRA experiments' shared parts; ``override`` /
``apply_overrides`` set any field from a path and a value (a string is parsed to
the field's type), as ``posjax.main`` does for ``--config.model.posenc_args.*``.
This module imports only ml_collections (posjax.encodings lazily), so loading a
config never pulls in the trainer, optax, orbax, grain or TFDS.
"""
from __future__ import annotations

import ast
import dataclasses
from typing import Any, Mapping

import ml_collections
from ml_collections.config_flags import tuple_parser

POSENC_ARGS = 'model.posenc_args'
_BOOLS = {'true': True, 'yes': True, '1': True, 'false': False, 'no': False, '0': False}


# ----------------------------------------------------------------------------
# Typed values.

def _type_name(like: Any) -> str:
  name = {bool: 'true, false, 1, 0, yes or no', int: 'an int', float: 'a float',
          str: 'a string', tuple: 'a comma-separated tuple'}.get(type(like))
  if name:
    return name
  if isinstance(like, (dict, ml_collections.ConfigDict)):
    return "a dict literal such as {'key': 1}"
  return 'a Python literal or a string'


def _literal(text: str) -> Any:
  """A Python literal (number, tuple, dict, None, True), else the string itself."""
  if text.lower() in ('true', 'false'):
    return text.lower() == 'true'
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def parse_value(field: str, text: str, like: Any) -> Any:
  """``text`` parsed to the type of ``like`` (the field's current or default
  value); a one-line ``ValueError`` naming ``field`` when it does not parse."""
  kind = type(like)
  try:
    if kind is bool:
      return _BOOLS[text.strip().lower()]
    if kind in (int, float):
      return kind(text)
    if kind is str:
      return text
    if kind is tuple:
      return tuple_parser.TupleParser().parse(text)
    value = _literal(text)
    if isinstance(like, (dict, ml_collections.ConfigDict)) and not isinstance(value, dict):
      raise ValueError(text)
    return value
  except (KeyError, ValueError):
    raise ValueError(f'{field}: got {text!r}; allowed: {_type_name(like)}') from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """big_vision-style config argument, e.g. ``'posenc=alibi,size=small,runlocal'``.

  Each ``key=value`` is parsed to the type of ``defaults[key]`` (int, float, str or
  bool: true/false/1/0/yes/no in any case); a bare ``key`` means True. Unknown
  keys and values of the wrong type are one-line ``ValueError``s.
  """
  out = dict(defaults)
  for part in filter(None, (p.strip() for p in (arg or '').split(','))):
    key, eq, value = (s.strip() for s in part.partition('='))
    if key not in defaults:
      raise ValueError(f'{key}: unknown config argument; allowed: {", ".join(defaults)}')
    if not eq and not isinstance(defaults[key], bool):
      raise ValueError(f'{key}: got no value; allowed: {key}=<{_type_name(defaults[key])}>')
    out[key] = parse_value(key, value, defaults[key]) if eq else True
  return ml_collections.ConfigDict(out)


# ----------------------------------------------------------------------------
# Overrides of any field by path.

def _encoding_default(config: ml_collections.ConfigDict, key: str) -> Any:
  """The default of field ``key`` of the configured encoding (None if unknown)."""
  from posjax import encodings
  field = encodings.get(config.model.posenc).__dataclass_fields__.get(key)
  return None if field is None or field.default is dataclasses.MISSING else field.default


def _parent(config: ml_collections.ConfigDict, parts: list[str]) -> ml_collections.ConfigDict:
  """The dict holding ``parts[-1]``; below posenc_args, missing (or None) dicts
  are created."""
  node = config
  for i, name in enumerate(parts[:-1]):
    path = '.'.join(parts[:i + 1])
    if path.startswith(POSENC_ARGS + '.') and node.get(name) is None:
      with node.unlocked():
        node[name] = ml_collections.ConfigDict()
    if name not in node:
      raise _no_field(path, node)
    node = node[name]
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f'{path}: got {node!r}, not a dict; allowed: a path through '
                       'dict fields')
  return node


def _no_field(path: str, node: ml_collections.ConfigDict) -> ValueError:
  return ValueError(f'{path}: no such config field; allowed: '
                    f'{", ".join(sorted(node.keys())) or "(none)"}')


def override(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets field ``path`` (``'model.posenc_args.scaling.type'``) of ``config``.

  A string ``value`` is parsed to the type of the field's current value; keys
  below ``model.posenc_args`` may be new (the encoding's fields are known only
  once ``model.posenc`` is final): typed by the encoding's dataclass default,
  else as a Python literal with a string fallback. Elsewhere an unknown path is
  a one-line ``ValueError`` listing the fields that exist.
  """
  parts = path.split('.')
  node, key = _parent(config, parts), parts[-1]
  below_posenc_args = path.startswith(POSENC_ARGS + '.')
  if key in node:
    like = node[key]
  elif below_posenc_args:
    like = _encoding_default(config, key) if len(parts) == 3 else None
  else:
    raise _no_field(path, node)
  if isinstance(value, str):
    value = parse_value(path, value, like)
  try:
    if below_posenc_args:
      with node.unlocked():
        node[key] = value
    else:
      node[key] = value
  except TypeError:
    raise ValueError(f'{path}: got {value!r}; allowed: {_type_name(like)}') from None


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """``override`` for each ``{path: value}``; keys below ``model.posenc_args``
  go last, so they are typed by the final ``model.posenc``. Returns ``config``."""
  items = sorted(overrides.items(), key=lambda kv: kv[0].startswith(POSENC_ARGS + '.'))
  for path, value in items:
    override(config, path, value)
  return config


# ----------------------------------------------------------------------------
# The shared experiment fields.

def base_config(posenc: str = 'rope') -> ml_collections.ConfigDict:
  """The fields every experiment config shares, with defaults (see configs/)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.multihost = False
  # Multi-process runs: a peer silent this long stops the others with one line.
  c.peer_timeout_seconds = 60
  c.task = 'lm'
  # Steps.
  c.num_train_steps = 20_000
  c.log_every_steps = 50
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3
  # Batches.
  c.batch_size = 64
  c.seq_len = 512
  c.eval_batch_size = 64
  c.num_eval_batches = 4
  c.eval_lengths = (512,)
  # Optimizer.
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.schedule = 'cosine'  # cosine | rsqrt
  c.grad_clip = 1.0  # Global norm; 0 = no clipping.
  c.grad_accum_steps = 1
  # A workdir whose newest parameters initialise a new run (fine-tuning); '' = none.
  c.init_from = ''
  c.schedule_steps = 0  # Schedule length; 0 = num_train_steps (a resumed run keeps its own).
  # Profiling: a jax.profiler trace of steps (a, b) into <workdir>/profile; (0, 0) = off.
  c.profile_steps = (0, 0)
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  # Parallelism: mesh axis sizes (-1 fills the remaining devices) and the map
  # from logical axis names to mesh axes; unnamed logical axes are replicated.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  c.logical_axis_rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
      ('kv', None),
      ('length', None),
  )
  # Model: exactly the fields of posjax.models.ModelConfig.
  c.model = ml_collections.ConfigDict(dict(
      kind='decoder', vocab_size=260, num_layers=6, num_heads=8, model_dim=512,
      mlp_dim=2048, max_len=512, dropout_rate=0.0, dtype='bfloat16', norm='rmsnorm',
      tied_embedding=True, posenc=posenc, posenc_args=ml_collections.ConfigDict(),
      attention='auto', block_size=ml_collections.FieldReference('auto', field_type=object),
      remat='none', scan_layers=True, qk_norm='none', qk_norm_scale='learned',
      temperature='none', temperature_args=ml_collections.ConfigDict(), window=0, chunk=0,
      sinks='none', sink_tokens=0, normalizer='softmax', attend_current=False,
      layer_pattern=ml_collections.FieldReference((), field_type=tuple),
      randomized_positions=False, max_random_position=4096, num_classes=2, pooling='mean',
      pad_id=0))
  return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks steps, batches and data (``tiny``) to minutes on a laptop CPU."""
  if 'size' in c.data:
    c.data.size = 'tiny'
  c.num_train_steps, c.warmup_steps, c.log_every_steps = 60, 10, 10
  c.eval_every_steps = c.checkpoint_every_steps = 30
  c.batch_size, c.eval_batch_size, c.num_eval_batches = 16, 16, 1
  c.learning_rate = 1e-3
  c.model.dtype = 'float32'
  return c


def lra(arg, *, data: str, num_classes: int, vocab_size: int, seq_len: int, batch_size: int,
        num_train_steps: int, warmup_steps: int, eval_every_steps: int, eval_examples: int,
        learning_rate: float, schedule: str, weight_decay: float, grad_clip: float,
        model: dict, task: str = 'classification') -> ml_collections.ConfigDict:
  """An LRA encoder experiment: ``data`` from ``posjax.data.build`` in
  ``data.data_dir``; ``model`` overrides the encoder's fields. ``arg`` carries
  ``posenc``, ``size`` (the dataset build) and ``runlocal``."""
  c = base_config(arg.posenc)
  c.task = task
  c.data = dict(name=data, size=arg.size, data_dir='', eval_split='')  # '': validation.
  # A CLS token rides on top of the task's length, as LRA's encoder adds it (max_len += 1):
  # CIFAR's 1024 pixels all fit beside it.
  c.seq_len = seq_len + (model.get('pooling') == 'cls')
  c.batch_size = c.eval_batch_size = batch_size
  c.num_train_steps, c.warmup_steps = num_train_steps, warmup_steps
  c.eval_every_steps = c.checkpoint_every_steps = eval_every_steps
  c.num_eval_batches = -(-eval_examples // batch_size)
  c.learning_rate, c.schedule = learning_rate, schedule
  c.weight_decay, c.grad_clip = weight_decay, grad_clip
  c.model.update(kind='matcher' if task == 'matching' else 'encoder_classifier',
                 vocab_size=vocab_size, num_classes=num_classes, max_len=c.seq_len,
                 dtype='float32', norm='layernorm', **model)
  if arg.runlocal:
    runlocal(c)
    c.seq_len = c.model.max_len = min(c.seq_len, 128)
    c.model.update(num_layers=min(c.model.num_layers, 2), model_dim=64, mlp_dim=128,
                   num_heads=min(c.model.num_heads, 4), dropout_rate=0.0)
  return c


def encoder_sweep() -> list[dict]:
  """Every registered encoding that works bidirectionally (the LRA comparison)."""
  from posjax import encodings
  return [{'model.posenc': name} for name in encodings.names()
          if not encodings.get(name).causal_only]


# ----------------------------------------------------------------------------
# Presets of recent models' per-layer schedules (``model.layer_pattern``,
# posjax/models/layer_pattern.py), for ``configs/lm.py:arch=...``. Windows and
# chunks are a quarter of the training length, so that they scale with it
# (``runlocal`` included) and evaluation past the training length crosses them;
# the published models use 1024 (Gemma 3), 4096 (Command A), 512 (SWAN-GPT) and
# 8192 (Llama 4) at far longer training lengths.

def _irope(w):
  """Llama 4 (iRoPE): RoPE with chunked attention on three of every four layers,
  NoPE with global attention and temperature tuning on the fourth."""
  return 3 * ({'posenc': 'rope', 'chunk': w},) + (
      {'posenc': 'none', 'temperature': 'llama4',
       'temperature_args': {'floor_scale': w, 'attn_scale': 0.1}},)


def _gemma3(w):
  """Gemma 3: five sliding-window layers (RoPE base 10,000), one global layer
  (base 1,000,000); QK-norm (set by the preset beside the pattern)."""
  return 5 * ({'posenc': 'rope', 'posenc_args': {'base': 10_000.0}, 'window': w},) + (
      {'posenc': 'rope', 'posenc_args': {'base': 1_000_000.0}},)


def _command_a(w):
  """Command A: three sliding-window RoPE layers to one global NoPE layer."""
  return 3 * ({'posenc': 'rope', 'window': w},) + ({'posenc': 'none'},)


def _swan(w):
  """SWAN-GPT: global NoPE layers interleaved with sliding-window RoPE layers
  (one to three), the NoPE layers' queries scaled by log-length past the
  training length (``temperature='logn'``: 1 up to it)."""
  return 3 * ({'posenc': 'rope', 'window': w},) + ({'posenc': 'none', 'temperature': 'logn'},)


# arch -> (pattern of a window / chunk w, other model fields, w over the training length).
ARCHS = {'irope': (_irope, {}, 1 / 4), 'gemma3': (_gemma3, {'qk_norm': 'rms'}, 1 / 4),
         'command_a': (_command_a, {}, 1 / 4), 'swan': (_swan, {}, 1 / 4)}


def arch_fields(arch: str, train_len: int, window: int = 0) -> dict:
  """The model fields of preset ``arch``: windows / chunks of ``window`` tokens
  (0: its fraction of ``train_len``)."""
  if arch not in ARCHS:
    raise ValueError(f'arch: got {arch!r}; allowed: {", ".join(ARCHS)}')
  pattern, fields, fraction = ARCHS[arch]
  return dict(fields, layer_pattern=pattern(window or max(1, int(train_len * fraction))))
