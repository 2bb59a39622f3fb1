"""Evaluates a trained run's params under a changed config (zero-shot changes).

  python -m posjax.evaluate --config=configs/lm.py:posenc=rope,runlocal \
      --config.model.posenc_args.scaling.type=yarn --config.model.posenc_args.scaling.factor=4 \
      --config.eval_lengths=128,512 --from_workdir=/tmp/lm_rope --workdir=/tmp/lm_rope_yarn

The newest readable checkpoint of ``--from_workdir`` is restored into the model of
``--config``, which must have the same parameter shapes (a different RoPE scaling,
other evaluation lengths or data: anything that needs no training), and evaluated
on every eval set of the config. ``<workdir>/metrics.jsonl`` gets one record at the
restored step with the keys a training run's evaluation logs, ``<workdir>/config.json``
the config, and the results are printed as ``posjax.main`` prints them. The flags
are ``posjax.main``'s, plus ``--from_workdir``; errors are one line (exit 2).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax

from posjax import main as posjax_main

_FROM = flags.DEFINE_string('from_workdir', None,
                            'The trained run whose params are evaluated.')


def evaluate(config, from_workdir: str, workdir: str) -> dict[str, float]:
  """Evaluates ``from_workdir``'s params under ``config``; logs to ``workdir``."""
  from posjax.training import metrics, validation
  from posjax.training.steps import Trainer
  from posjax.workdir import checkpoints, run_config
  mcfg, task = validation.validate(config)
  trainer = Trainer(config, mcfg, task)
  try:
    params, step = checkpoints.restore_params(from_workdir, trainer.abstract_state['params'])
  except (FileNotFoundError, ValueError, checkpoints.UnreadableCheckpointError) as e:
    raise validation.InputError(f'--from_workdir: {" ".join(str(e).split())[:300]}; '
                                'allowed: a trained run of a model with these '
                                'parameter shapes') from None
  try:
    eval_sets = task.eval_sets(jax.process_index(), jax.process_count())
  except ValueError as e:
    raise validation.InputError(str(e)) from None
  validation.check_eval_sets(mcfg, eval_sets)
  results = trainer.evaluate(params, eval_sets)
  os.makedirs(workdir, exist_ok=True)
  run_config.save_config(workdir, config)
  writer = metrics.MetricWriter(workdir)  # Start 0: a rerun replaces the record.
  writer.write(step, results)
  writer.close()
  return results


def _fail(message: str) -> None:
  sys.stderr.write(f'error: {" ".join(str(message).split())}\n')
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f'arguments: unexpected {argv[1:]}; allowed: flags only')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from posjax.training import validation
  workdir, source = flags.FLAGS.workdir, _FROM.value
  if not workdir or not source:
    _fail('--workdir, --from_workdir: required; allowed: directories')
  try:
    final = evaluate(posjax_main.loaded_config(), source, workdir)
  except (validation.ConfigError, validation.InputError) as e:
    _fail(str(e))
  print(f'metrics:     {os.path.join(os.path.abspath(workdir), "metrics.jsonl")}')
  print('final evaluation:')
  for k in sorted(final):
    print(f'  {k:28s} {final[k]:.4f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=posjax_main.parse_flags)
