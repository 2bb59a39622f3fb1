"""The command line shared by every suite (``posjax.suites.runner``): its flags,
``--config.<field>=<value>`` overrides and ``--help``."""
from __future__ import annotations

from absl import flags


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string('workdir', None, 'Suite directory: one subdirectory per run.',
                      flag_values=fv)
  flags.DEFINE_enum('scale', 'local', ['local', 'paper'], "local: minutes on a CPU; "
                    "paper: the paper's sizes, lengths and steps.", flag_values=fv)
  flags.DEFINE_list('only', [], 'Run names or globs (their base runs are added); with '
                    '--report or --export, the runs reported.', flag_values=fv)
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'print'],
                    'local: here; slurm: a submitit job array; print: the command lines.',
                    flag_values=fv)
  flags.DEFINE_integer('parallel', 1, 'local: runs at a time.', lower_bound=1, flag_values=fv)
  flags.DEFINE_string('slurm_partition', '', 'slurm: partition.', flag_values=fv)
  flags.DEFINE_string('slurm_account', '', 'slurm: account.', flag_values=fv)
  flags.DEFINE_integer('slurm_gpus_per_node', 1, 'slurm: GPUs per run (one node).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('slurm_cpus_per_task', 8, 'slurm: CPUs per run.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer('slurm_time_min', 240, 'slurm: time limit per run (minutes).',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('slurm_array_parallelism', 64, 'slurm: runs at a time.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('submitit_cluster', 'slurm', ['slurm', 'local', 'debug'],
                    "slurm: sbatch; local / debug: submitit's executors on this machine.",
                    flag_values=fv)
  flags.DEFINE_bool('report', False, 'Only write the report of the runs there are.',
                    flag_values=fv)
  flags.DEFINE_string('export', None, 'Copy the records of the finished runs (config, '
                      'status, metrics; no checkpoints) into this folder, beside those '
                      'there, and write its report: results to commit and regenerate.',
                      flag_values=fv)
  flags.DEFINE_bool('dry_run', False, 'Print what would run and write nothing.',
                    flag_values=fv)
  return fv


def split_config_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """``argv`` less its ``--config.<path>=<value>`` flags, and those as a dict."""
  rest, overrides = [], {}
  for arg in argv:
    if arg.startswith(('--config.', '-config.')):
      path, eq, value = arg.lstrip('-')[len('config.'):].partition('=')
      overrides[path] = value if eq else 'true'
    else:
      rest.append(arg)
  return rest, overrides


HELP_FLAGS = ('--help', '-help', '-h', '--helpshort', '--helpfull', '-?')


def usage(suite, fv: flags.FlagValues) -> str:
  """The suite's docstring and the runner's flags (``--help``)."""
  lines = [(suite.__doc__ or f'{suite.NAME}: {suite.DESCRIPTION}').strip(), '', 'flags:']
  for name in fv:
    flag = fv[name]
    default = ','.join(flag.default) if isinstance(flag.default, list) else flag.default
    boolean = isinstance(flag, flags.BooleanFlag)
    lines.append(f'  --{"[no]" if boolean else ""}{name}: {flag.help}' +
                 (f' (default: {default})' if default not in (None, '', False) else ''))
  lines.append('  --config.<field>=<value>: set a field of every run\'s config (repeatable), '
               "e.g. --config.data.path='~/corpus/*.txt'")
  return '\n'.join(lines) + '\n'
