"""Byte-level language modelling on local text, any positional encoding.

Usage:
  python -m posjax.main --config=configs/lm.py:posenc=alibi,size=small,runlocal \
      --workdir=/tmp/lm
Arguments (comma-separated, ``key=value`` or a bare flag):
  posenc=<name>   a registered encoding (``posjax.encodings.names()``)
  size=tiny|small|base
  runlocal        shrinks everything to train in about a minute on 2 CPU cores
"""
import ml_collections

SIZES = {  # num_layers, num_heads, model_dim, mlp_dim
    'tiny': (2, 4, 64, 256),
    'small': (4, 4, 256, 1024),
    'base': (6, 8, 512, 2048),
}


def _parse(arg: str) -> ml_collections.ConfigDict:
  out = {'posenc': 'rope', 'size': 'small', 'runlocal': False}
  for part in filter(None, (arg or '').split(',')):
    key, _, value = part.partition('=')
    out[key.strip()] = value.strip() if value else True
  return ml_collections.ConfigDict(out)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  arg = _parse(arg)
  if arg.size not in SIZES:
    raise ValueError(f'size: got {arg.size!r}; allowed: {", ".join(SIZES)}')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.multihost = False

  # Steps.
  c.num_train_steps = 20_000
  c.log_every_steps = 50
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 1_000
  c.keep_checkpoints = 3

  # Data: byte-level text; path='' reads the Python standard library.
  c.data = ml_collections.ConfigDict({'name': 'local_text', 'path': ''})
  c.batch_size = 64
  c.seq_len = 512
  c.eval_batch_size = 64
  c.num_eval_batches = 4
  c.eval_lengths = [512, 1024, 2048]  # Longer than training: extrapolation.

  # Optimizer.
  c.learning_rate = 1e-3
  c.warmup_steps = 1_000
  c.schedule = 'cosine'  # cosine | rsqrt
  c.grad_clip = 1.0
  c.grad_accum_steps = 1
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98

  # Parallelism: mesh axis sizes (-1 fills the remaining devices) and the map
  # from logical axis names to mesh axes; unnamed logical axes are replicated.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
  c.logical_axis_rules = [
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
      ('kv', None),
      ('length', None),
  ]

  # Model: exactly the fields of posjax.models.ModelConfig.
  layers, heads, dim, mlp = SIZES[arg.size]
  c.model = ml_collections.ConfigDict(dict(
      kind='decoder', vocab_size=260, num_layers=layers, num_heads=heads,
      model_dim=dim, mlp_dim=mlp, max_len=c.seq_len, dropout_rate=0.0,
      dtype='bfloat16', norm='rmsnorm', tied_embedding=True, posenc=arg.posenc,
      posenc_args=ml_collections.ConfigDict(), attention='dense',
      block_size=128, randomized_positions=False, max_random_position=4096,
      num_classes=2, pooling='mean', pad_id=0))

  if arg.runlocal:
    c.num_train_steps = 200
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_eval_batches = 2
    c.seq_len = 128
    c.eval_lengths = [128, 256, 512]
    c.warmup_steps = 20
    c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
    c.model.update(num_layers=2, num_heads=4, model_dim=128, mlp_dim=256,
                   max_len=128, dtype='float32')
  if arg.posenc == 'learned':  # The table must cover every evaluation length.
    c.model.max_len = max(c.eval_lengths)
  return c


def sweep():
  """One override dict per registered encoding (the comparison)."""
  from posjax import encodings
  return [{'model.posenc': name} for name in encodings.names()]
