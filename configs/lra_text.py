"""LRA Text: byte-level IMDB sentiment (Tay et al. 2021) with any positional encoding.

  # aclImdb_v1.tar.gz from https://ai.stanford.edu/~amaas/data/sentiment/ in $M
  python -m posjax.data.build lra_text --data_dir=$DATA --manual_dir=$M --size=full
  python -m posjax.main --config=configs/lra_text.py:posenc=alibi \
      --config.data.data_dir=$DATA --workdir=/tmp/text_alibi

Defaults follow the LRA reference config (lra_benchmarks/text_classification/
configs/base_tc_config.py): 4 layers, 256 dims, 4 heads, MLP 1024, CLS pooling,
batch 32, 20k steps, weight decay 0.1, no gradient clipping, schedule
``0.05 * linear_warmup(8000) * rsqrt_decay`` (peak 0.05 / sqrt(8000)). Length
4000 bytes as in the paper (the code's default is 1000). Evaluation is on the
test split, as LRA's (IMDB has no validation split). Arguments: posenc=<name>,
size=tiny|small|full (the dataset build), runlocal.
"""
from posjax import config_lib


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, posenc='rope', size='full', runlocal=False)
  return config_lib.lra(
      arg, data='lra_text', num_classes=2, vocab_size=258, seq_len=4000, batch_size=32,
      num_train_steps=20_000, warmup_steps=8_000, eval_every_steps=1_000,
      eval_examples=25_000, learning_rate=0.05 / 8000 ** 0.5, schedule='rsqrt',
      weight_decay=0.1, grad_clip=0.0,
      model=dict(pooling='cls', num_layers=4, num_heads=4, model_dim=256, mlp_dim=1024))


sweep = config_lib.encoder_sweep
