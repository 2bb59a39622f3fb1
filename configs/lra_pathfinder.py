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
from posjax import config_lib

TRAIN_EXAMPLES = 160_000


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, posenc='rope_2d', res=32, size='full', runlocal=False)
  res = arg.res
  epoch = TRAIN_EXAMPLES // 512
  c = config_lib.lra(
      arg, data=f'pathfinder{res}', num_classes=2, vocab_size=258, seq_len=res * res,
      batch_size=512, num_train_steps=200 * epoch, warmup_steps=epoch, eval_every_steps=epoch,
      eval_examples=20_000, learning_rate=1e-3, schedule='cosine', weight_decay=0.0,
      grad_clip=0.0, model=dict(pooling='mean', num_layers=1, num_heads=4, model_dim=128,
                                mlp_dim=128, dropout_rate=0.2))
  return c


sweep = config_lib.encoder_sweep
