"""LRA Pathfinder (32x32; ``res=128`` for Path-X) with any positional encoding.

  python -m posjax.data.build pathfinder32 --data_dir=$DATA --size=full
  python -m posjax.main --config=configs/lra_pathfinder.py:posenc=rope_2d \
      --config.data.data_dir=$DATA --workdir=/tmp/pf_rope2d

Defaults follow LRA's pathfinder32 transformer config (lra_benchmarks/image/
configs/pathfinder32/transformer_base.py): 1 layer, 4 heads, 128 dims, MLP 128,
dropout 0.2, mean pooling, batch 512, learning rate 1e-3 with one epoch of
warmup then cosine decay over 200 epochs of 160k images, no weight decay. One
difference: LRA's qkv width is 64 (head dim 16); posjax's head dim is
model_dim / num_heads = 32. Arguments: posenc=<name>, res=32|128, size, runlocal.
"""
from posjax import encodings, train

TRAIN_EXAMPLES = 160_000


def get_config(arg: str = ''):
  arg = train.parse_arg(arg, posenc='rope_2d', res='32', size='full', runlocal=False)
  res = int(arg.res)
  c = train.base_config(arg.posenc)
  c.task = 'classification'
  c.data = dict(name=f'pathfinder{res}', size=arg.size, data_dir='')
  steps_per_epoch = TRAIN_EXAMPLES // 512
  c.batch_size = c.eval_batch_size = 512
  c.num_train_steps, c.warmup_steps = 200 * steps_per_epoch, steps_per_epoch
  c.eval_every_steps = c.checkpoint_every_steps = steps_per_epoch
  c.num_eval_batches = 20_000 // 512
  c.seq_len = res * res
  c.learning_rate, c.schedule, c.weight_decay, c.grad_clip = 1e-3, 'cosine', 0.0, 0.0
  c.model.update(kind='encoder_classifier', vocab_size=258, num_classes=2, pooling='mean',
                 num_layers=1, num_heads=4, model_dim=128, mlp_dim=128, dropout_rate=0.2,
                 max_len=res * res, dtype='float32', norm='layernorm')
  if arg.posenc in ('rope_2d', 'sinusoidal_2d'):
    c.model.posenc_args = {'grid_width': res}
  if arg.runlocal:
    c.data.size = 'tiny'
    c.num_train_steps, c.warmup_steps, c.log_every_steps = 60, 10, 10
    c.eval_every_steps = c.checkpoint_every_steps = 30
    c.batch_size = c.eval_batch_size = 16
    c.num_eval_batches = 1
  return c


def sweep():
  return [{'model.posenc': name} for name in encodings.names()
          if not encodings.get(name).causal_only]
