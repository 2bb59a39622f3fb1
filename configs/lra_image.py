"""LRA Image: CIFAR-10 as 1024 grey pixels (Tay et al. 2021) with any encoding.

  # cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html in $M
  python -m posjax.data.build lra_image --data_dir=$DATA --manual_dir=$M --size=full
  python -m posjax.main --config=configs/lra_image.py:posenc=sinusoidal_2d \
      --config.data.data_dir=$DATA --workdir=/tmp/image_sin2d

Defaults follow the LRA reference config (lra_benchmarks/image/configs/cifar10/
base_cifar10_config.py): 1 layer, 1 head, 32 dims, MLP 64, dropout 0.3, CLS
pooling (the CLS token on top of the 1024 pixels, as LRA's encoder adds it),
batch 256, learning rate 5e-4 with one epoch of warmup and cosine decay over 200
epochs of 45k images, no weight decay, no clipping; LRA's baseline encoding is
``learned`` (the default here). Differences: posjax has no separate attention
dropout (LRA: 0.2) and its cosine ends at 0.1x the peak (LRA: 0). Arguments:
posenc=<name>, size, runlocal.
"""
from posjax import config_lib

TRAIN_EXAMPLES = 45_000


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, posenc='learned', size='full', runlocal=False)
  epoch = TRAIN_EXAMPLES // 256
  c = config_lib.lra(
      arg, data='lra_image', num_classes=10, vocab_size=258, seq_len=1024, batch_size=256,
      num_train_steps=200 * epoch, warmup_steps=epoch, eval_every_steps=epoch,
      eval_examples=5_000, learning_rate=5e-4, schedule='cosine', weight_decay=0.0,
      grad_clip=0.0, model=dict(pooling='cls', num_layers=1, num_heads=1, model_dim=32,
                                mlp_dim=64, dropout_rate=0.3))
  return c


sweep = config_lib.encoder_sweep
