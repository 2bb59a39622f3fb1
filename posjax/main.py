"""Trains a model: ``python -m posjax.main --config=configs/lm.py:runlocal --workdir=DIR``.

Kept thin: all logic lives in ``posjax.training.loop`` (importable from a notebook).
Every command-line or config mistake ends as one line ``error: <field>: ...;
allowed: ...`` on stderr with exit code 2, before anything is written.
``--config.model.posenc_args.<key>[.<key>...]=<value>`` may name keys the config
file does not have (each encoding has its own): those flags are taken out of argv
before absl parses it and applied to the loaded config by
``config_lib.apply_overrides``.
"""
import os
import re
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from posjax import config_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')
_USAGE = '--config=<file>.py[:<args>], --config.<field>=<value>, --workdir=<dir>'
_POSENC_ARG = re.compile(r'--?config\.(model\.posenc_args\.[\w.]+)(?:=(.*))?', re.S)


def _fail(message: str, code: int):
  sys.stderr.write(f'error: {" ".join(str(message).split())}\n')  # Always one line.
  sys.exit(code)


def _field_type(path: str) -> str:
  """'an int' for the overridden field ``config.a.b``, if the config loaded."""
  try:
    value = flags.FLAGS['config'].value
    for key in path.split('.')[1:]:
      value = value[key]
    name = type(value).__name__
    return f'{"an" if name[0] in "aeiou" else "a"} {name}'
  except Exception:  # The config itself failed to load.
    return "a value of the field's type"


def flag_error(e: Exception, argv) -> str:
  """``<flag>: ...; allowed: ...`` (one line) for an absl / config_flags error."""
  text = str(e)
  if isinstance(e, flags.UnrecognizedFlagError):
    return f'--{e.flagname}: unknown flag; allowed: {_USAGE}'
  if isinstance(e, (AttributeError, KeyError)):  # An override of a missing field.
    for arg in argv:
      path = arg[2:].partition('=')[0] if arg.startswith('--config.') else ''
      if any(re.search(rf'\b{re.escape(k)}\b', text) for k in path.split('.')[1:]):
        hint = re.search(r'Did you mean "(\w+)"', text)
        return (f'--{path}: no such config field; allowed: the fields of the config '
                f'file{f" (did you mean {hint.group(1)!r}?)" if hint else ""}')
  if m := re.search(r"Type <class '(\w+)'> of field ([\w.]+) is not supported", text):
    return (f'--{m.group(2)}: a {m.group(1)} field cannot be set on the command '
            'line; allowed: int, float, bool, str or tuple fields (edit the config file)')
  if m := re.match(r'flag (--[\w.]+)=(.*?): (.*)', text, re.S):
    name, value, reason = m.groups()
    if 'must have a value other than None' in reason:
      return f'{name}: required; allowed: {_USAGE}'
    inner = re.findall(r'^\w*(?:Error|Exception): (.+)$', reason, re.M)
    if inner:  # The config file's own error, e.g. "size: got 'huge'; allowed: ...".
      return f'{name}: {inner[-1]}'
    return f'{name}: got {value!r} ({reason.strip()}); allowed: {_field_type(name[2:])}'
  return f'--config: {type(e).__name__}: {text}; allowed: {_USAGE}'


def split_posenc_args(argv) -> tuple[list[str], dict[str, str]]:
  """``argv`` less its ``--config.model.posenc_args.<key...>=<value>`` flags, and
  those as ``{'model.posenc_args.<key...>': value}`` (a bare flag is 'true')."""
  rest, overrides = [], {}
  for i, arg in enumerate(argv):
    if arg == '--':  # Positional arguments follow.
      return rest + list(argv[i:]), overrides
    if m := _POSENC_ARG.fullmatch(arg):
      overrides[m.group(1)] = 'true' if m.group(2) is None else m.group(2)
    else:
      rest.append(arg)
  return rest, overrides


def parse_flags(argv):
  """absl flag parsing whose every failure is a one-line exit-2 error; then the
  posenc_args flags are applied to ``flags.FLAGS['config'].value``."""
  argv, posenc_args = split_posenc_args(argv)
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)  # A previous parse's overrides (re-entrant in tests).
  saved, sys.argv = sys.argv, argv  # config_flags reads --config.* from sys.argv.
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, ImportError,
          OSError, SyntaxError) as e:
    _fail(flag_error(e, argv), 2)
  finally:
    sys.argv = saved
  if posenc_args:
    try:
      config_lib.apply_overrides(loaded_config(), posenc_args)
    except ValueError as e:
      _fail(f'--config.{e}', 2)
  return rest


def loaded_config():
  """The parsed ``--config``; a file that failed to load is a one-line exit 2."""
  config = _CONFIG.value
  if config is None:
    _fail(f'--config: required; allowed: {_USAGE}', 2)
  try:
    config.keys()  # A config file that failed to load raises here.
  except OSError as e:
    _fail(f'--config: {str(e).strip().splitlines()[-1].strip()}; allowed: a config '
          'file such as configs/lm.py', 2)
  return config


def main(argv):
  if len(argv) > 1:
    _fail(f'arguments: unexpected {argv[1:]}; allowed: {_USAGE}', 2)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  run_job(loaded_config(), _WORKDIR.value)


def run_job(config, workdir: str | None):
  """Validates, trains and reports: everything after flag parsing."""
  from posjax.training import loop, memory, validation
  from posjax.workdir import checkpoints
  if not workdir:
    _fail(f'--workdir: required; allowed: {_USAGE}', 2)
  try:
    final = loop.train_and_evaluate(config, workdir)  # Validates once, first.
  except (validation.ConfigError, validation.InputError, memory.ResourceError) as e:
    _fail(str(e), 2)
  except (FloatingPointError, checkpoints.UnreadableCheckpointError,
          checkpoints.SaveError) as e:
    _fail(str(e), 1)
  except KeyboardInterrupt:  # Before the first step (the loop itself saves and exits 130).
    _fail('interrupted (Ctrl-C) before training started; nothing was saved', 130)
  workdir = os.path.abspath(workdir)
  print(f'checkpoints: {checkpoints.checkpoint_dir(workdir)}')
  print(f'tensorboard: tensorboard --logdir {workdir}')
  print(f'metrics:     {os.path.join(workdir, "metrics.jsonl")}')
  print('final evaluation:')
  for k in sorted(k for k in final if k.startswith('eval/')):
    print(f'  {k:28s} {final[k]:.4f}')


def run():
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
