"""LRA ListOps (Tay et al. 2021) with any positional encoding.

  python -m posjax.data.build listops --data_dir=$DATA --size=full
  python -m posjax.main --config=configs/lra_listops.py:posenc=alibi \
      --config.data.data_dir=$DATA --workdir=/tmp/listops_alibi

Defaults follow the LRA reference config (lra_benchmarks/listops/configs/
base_listops_config.py): 6 layers, 512 dims, 8 heads, MLP 2048, CLS pooling,
length 2000, batch 32, 5000 steps, weight decay 0.1, no gradient clipping, and
the schedule ``0.05 * linear_warmup(1000) * rsqrt_decay``, i.e. a peak of
0.05 / sqrt(1000). Arguments: posenc=<name>, size=tiny|small|full (the dataset
build), runlocal.
"""
from posjax import config_lib


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, posenc='rope', size='full', runlocal=False)
  return config_lib.lra(
      arg, data='listops', num_classes=10, vocab_size=20, seq_len=2000, batch_size=32,
      num_train_steps=5_000, warmup_steps=1_000, eval_every_steps=500, eval_examples=2_000,
      learning_rate=0.05 / 1000 ** 0.5, schedule='rsqrt', weight_decay=0.1, grad_clip=0.0,
      model=dict(pooling='cls', num_layers=6, num_heads=8, model_dim=512, mlp_dim=2048))


sweep = config_lib.encoder_sweep
