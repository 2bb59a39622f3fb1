"""Language modelling with any positional encoding (byte level by default).

Usage:
  python -m posjax.main --config=configs/lm.py:posenc=alibi,size=small,runlocal \
      --workdir=/tmp/lm
  # Any TFDS text dataset prepared as array_record (lm1b, pg19, wiki40b/en, c4/en):
  python -m posjax.main --config=configs/lm.py:posenc=alibi --config.data.name=pg19 \
      --config.data.data_dir=$TFDS --workdir=/tmp/lm_pg19
  # Your own text files, SentencePiece tokens:
  python -m posjax.data.train_tokenizer --path='~/corpus/*.txt' --vocab_size=8000 \
      --output=/tmp/spm
  python -m posjax.main --config=configs/lm.py --config.data.path='~/corpus/*.txt' \
      --config.data.tokenizer=/tmp/spm.model --config.model.vocab_size=8004 --workdir=/tmp/lm_spm
Arguments (comma-separated, ``key=value`` or a bare flag):
  posenc=<name>   a registered encoding (``posjax.encodings.names()``)
  size=tiny|small|base
  arch=irope|gemma3|command_a|swan
                  a recent model's per-layer schedule (``posjax.config_lib.ARCHS``:
                  windows / chunks of a quarter of the training length, num_layers a
                  multiple of the pattern); posenc is then the pattern's base
  window=<int>    the arch's window / chunk (default: a quarter of seq_len)
  runlocal        shrinks everything to train in about a minute on 2 CPU cores
"""
import ml_collections

from posjax import config_lib

SIZES = {  # num_layers, num_heads, model_dim, mlp_dim
    'tiny': (2, 4, 64, 256),
    'small': (4, 4, 256, 1024),
    'base': (6, 8, 512, 2048),
}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, posenc='rope', size='small', arch='', window=0,
                             runlocal=False)
  if arg.size not in SIZES:
    raise ValueError(f'size: got {arg.size!r}; allowed: {", ".join(SIZES)}')
  c = config_lib.base_config(arg.posenc)
  c.task = 'lm'
  # Data (posjax.data.inputs): local_text over ``path`` ('' = the Python standard
  # library, built into a cache on first use) or a TFDS name in ``data_dir``;
  # text_key '' = the dataset's text feature (book_text for pg19, else text);
  # eval_split '' = validation, or test when there is none.
  c.data = ml_collections.ConfigDict(dict(
      name='local_text', path='', data_dir='', size='full', text_key='', eval_split='',
      tokenizer='bytes', shuffle_window=1024))
  c.seq_len = 512
  c.eval_lengths = (512, 1024, 2048)  # Longer than training: extrapolation.
  # Passkey retrieval (posjax.data.passkey) at these lengths x depths (0 = start).
  c.passkey_lengths, c.passkey_depths, c.passkey_examples = (), (0.0, 0.25, 0.5, 0.75, 1.0), 32
  layers, heads, dim, mlp = SIZES[arg.size]
  c.model.update(num_layers=layers, num_heads=heads, model_dim=dim, mlp_dim=mlp,
                 max_len=c.seq_len)

  if arg.runlocal:
    c.num_train_steps = 200
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.batch_size = 16
    c.eval_batch_size = 16
    c.num_eval_batches = 2
    c.seq_len = 128
    c.eval_lengths = (128, 256, 512)
    c.warmup_steps = 20
    c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'tensor': 1})
    c.model.update(num_layers=2, num_heads=4, model_dim=128, mlp_dim=256,
                   max_len=128, dtype='float32')
  if arg.arch:
    fields = config_lib.arch_fields(arg.arch, c.seq_len, window=arg.window)
    period = len(fields['layer_pattern'])
    c.model.update(fields, num_layers=-(-c.model.num_layers // period) * period)
  if arg.posenc == 'learned':  # The table must cover every evaluation length.
    c.model.max_len = max(c.eval_lengths)
  return c


def sweep():
  """One override dict per registered encoding (the comparison)."""
  from posjax import encodings
  return [{'model.posenc': name} for name in encodings.names()]
