"""Length generalisation (Delétang et al. 2023; Ruoss et al. 2023) with any encoding.

  python -m posjax.data.build reverse_string --data_dir=$DATA --size=full
  python -m posjax.main --config=configs/synthetic.py:task=reverse_string,posenc=rope \
      --config.data.data_dir=$DATA --workdir=/tmp/rev_rope

A decoder reads ``inputs SEP targets`` and is trained on the answer tokens only;
it trains on lengths 1..N and is evaluated at every test length N+1..10N
(``eval/sequence_accuracy@<n>``: all answer tokens right). Model and optimiser
defaults are posjax's choice (5 layers, 256 dims, 8 heads), not a paper's.
Arguments: task=<name>, posenc=<name>, size=tiny|small|full, randomized (Ruoss et
al.'s randomized positions, drawn in training and evaluation, with
max_random_position=2048; 1024 at runlocal, above the widest eval row of
size=small), runlocal.
"""
from posjax import config_lib
from posjax.data import synthetic, synthetic_splits


def get_config(arg: str = ''):
  arg = config_lib.parse_arg(arg, task='reverse_string', posenc='rope', size='full',
                             randomized=False, runlocal=False)
  if arg.task not in synthetic.TASKS:
    raise ValueError(f'task: got {arg.task!r}; allowed: {", ".join(synthetic.TASKS)}')
  c = config_lib.base_config(arg.posenc)
  c.task = 'sequence'
  c.data = dict(name=arg.task, size=arg.size, data_dir='')
  c.num_train_steps, c.warmup_steps = 100_000, 1_000
  c.eval_every_steps = c.checkpoint_every_steps = 10_000
  c.batch_size, c.eval_batch_size, c.num_eval_batches = 128, 32, 4
  c.seq_len = 512  # Packed training rows.
  c.learning_rate = 1e-4
  c.model.update(vocab_size=synthetic.VOCAB_SIZE, num_layers=5, num_heads=8,
                 model_dim=256, mlp_dim=1024, max_len=c.seq_len, dtype='float32',
                 randomized_positions=arg.randomized, max_random_position=2048)
  if arg.runlocal:
    config_lib.runlocal(c)
    c.seq_len = c.model.max_len = 128
    c.model.update(num_layers=2, num_heads=4, model_dim=64, mlp_dim=128,
                   max_random_position=1024)
  _fit(c)
  return c


def _fit(c):
  """Rows at least as long as the task's longest training example, and
  randomized positions covering its widest test row (both: the task's own
  lengths at ``data.size``; e.g. passkey's fixed text exceeds N)."""
  train, test = synthetic_splits.widths(c.data.name, c.data.size)
  c.seq_len = c.model.max_len = max(c.seq_len, -(-train // 32) * 32)
  c.model.max_random_position = max(c.model.max_random_position, 1 << (test - 1).bit_length())


def sweep():
  from posjax import encodings
  return [{'model.posenc': name} for name in encodings.names()]
