"""LRA ListOps (Tay et al. 2021) with any positional encoding.

  python -m posjax.data.build listops --data_dir=$DATA --size=full
  python -m posjax.main --config=configs/lra_listops.py:posenc=alibi \
      --config.data.data_dir=$DATA --workdir=/tmp/listops_alibi

Defaults follow the LRA reference config (lra_benchmarks/listops/configs/
base_listops_config.py): 6 layers, 512 dims, 8 heads, MLP 2048, CLS pooling,
length 2000, batch 32, 5000 steps, weight decay 0.1, and the schedule
``0.05 * linear_warmup(1000) * rsqrt_decay``, i.e. a peak of 0.05 / sqrt(1000).
Arguments: posenc=<name>, size=tiny|small|full (the dataset build), runlocal.
"""
from posjax import encodings, train


def get_config(arg: str = ''):
  arg = train.parse_arg(arg, posenc='rope', size='full', runlocal=False)
  c = train.base_config(arg.posenc)
  c.task = 'classification'
  c.data = dict(name='listops', size=arg.size, data_dir='')
  c.num_train_steps, c.warmup_steps = 5_000, 1_000
  c.eval_every_steps = c.checkpoint_every_steps = 500
  c.batch_size = c.eval_batch_size = 32
  c.num_eval_batches = 63  # The 2k validation examples.
  c.seq_len = 2000
  c.learning_rate, c.schedule, c.weight_decay = 0.05 / 1000 ** 0.5, 'rsqrt', 0.1
  c.model.update(kind='encoder_classifier', vocab_size=20, num_classes=10, pooling='cls',
                 max_len=2000, dtype='float32', norm='layernorm')
  if arg.runlocal:
    c.data.size = 'tiny'
    c.num_train_steps, c.warmup_steps, c.log_every_steps = 60, 10, 10
    c.eval_every_steps = c.checkpoint_every_steps = 30
    c.batch_size = c.eval_batch_size = 16
    c.num_eval_batches = 1
    c.seq_len = c.model.max_len = 128
    c.learning_rate = 1e-3
    c.model.update(num_layers=2, num_heads=4, model_dim=64, mlp_dim=128)
  return c


def sweep():
  return [{'model.posenc': name} for name in encodings.names()
          if not encodings.get(name).causal_only]
