"""LRA Retrieval: AAN citation pairs, two byte-level towers (Tay et al. 2021).

  # new_aan_pairs.{train,eval,test}.tsv from the LRA release in $M:
  #   https://storage.googleapis.com/long-range-arena/lra_release.gz
  python -m posjax.data.build lra_retrieval --data_dir=$DATA --manual_dir=$M --size=full
  python -m posjax.main --config=configs/lra_retrieval.py:posenc=alibi \
      --config.data.data_dir=$DATA --workdir=/tmp/retrieval_alibi

The ``matcher`` model encodes both documents with one encoder and classifies
an MLP over ``[u, v, u*v, u-v]``. Defaults follow the LRA reference config
(lra_benchmarks/matching/configs/base_match_config.py): 4 layers, 128 dims,
4 heads, MLP 512, CLS pooling, 4000 bytes per document, batch 32, 5000 steps,
weight decay 0.1, no gradient clipping, and ``0.05 * linear_warmup(8000) *
rsqrt_decay`` (the warmup is longer than training, as in LRA, so the rate
rises linearly to 0.05 * 5000 / 8000 / sqrt(8000)). Arguments: posenc=<name>,
size, runlocal.
"""
from posjax import config_lib


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, posenc='rope', size='full', runlocal=False)
  return config_lib.lra(
      arg, data='lra_retrieval', task='matching', num_classes=2, vocab_size=258,
      seq_len=4000, batch_size=32, num_train_steps=5_000, warmup_steps=8_000,
      eval_every_steps=500, eval_examples=20_000, learning_rate=0.05 / 8000 ** 0.5,
      schedule='rsqrt', weight_decay=0.1, grad_clip=0.0,
      model=dict(pooling='cls', num_layers=4, num_heads=4, model_dim=128, mlp_dim=512))


sweep = config_lib.encoder_sweep
