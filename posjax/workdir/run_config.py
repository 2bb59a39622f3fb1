"""The experiment config a workdir holds: ``<workdir>/config.json``, the config
saved with every checkpoint step, and the check that a rerun may resume them."""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from posjax.workdir.checkpoints import checkpoint_dir

CONFIG_FILE = 'config.json'


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  if jax.process_index() == 0:  # Atomic: a kill never leaves half a config.
    path = os.path.join(workdir, CONFIG_FILE)
    with open(path + '.tmp', 'w') as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(path + '.tmp', path)


# Fields a resumed run must share with the run that wrote the checkpoints: they
# decide the shapes and meaning of the saved state. Steps, rates and logging may change.
RESUME_FIELDS = ('task', 'model', 'data', 'seq_len', 'batch_size', 'grad_accum_steps', 'seed')


def _flat(d, prefix=''):
  if isinstance(d, dict):
    return {k: v for key, val in d.items() for k, v in _flat(val, f'{prefix}{key}.').items()}
  return {prefix[:-1]: d}


def latest_step(workdir: str) -> int | None:
  """The step of ``workdir``'s newest checkpoint on disk, None without any."""
  return _latest_step_on_disk(checkpoint_dir(workdir))


def _latest_step_on_disk(ckpts: str) -> int | None:
  steps = [int(n) for n in os.listdir(ckpts) if n.isdigit()] if os.path.isdir(ckpts) else []
  return max(steps, default=None)


def check_resumable(workdir: str, config: ml_collections.ConfigDict):
  """The saved config of ``workdir``'s checkpoints (None without any), after
  checking that ``config`` can resume them: ValueError naming the differing
  fields for another experiment, or a ``num_train_steps`` below the latest
  checkpoint's step. Writes nothing."""
  path, ckpts = os.path.join(workdir, CONFIG_FILE), checkpoint_dir(workdir)
  latest = _latest_step_on_disk(ckpts)
  if latest is None:
    return None
  saved_config = step_config(workdir, latest)
  if saved_config is None:  # Steps written before configs were saved with them.
    if not os.path.exists(path):
      raise ValueError(f'workdir: {workdir} holds checkpoints but no {CONFIG_FILE} '
                       'to tell which experiment wrote them; allowed: a workdir with its '
                       f'{CONFIG_FILE}, or a new workdir')
    saved_config = load_config(workdir)
  saved = _flat({k: v for k, v in saved_config.to_dict().items() if k in RESUME_FIELDS})
  now = _flat({k: v for k, v in json.loads(config.to_json_best_effort()).items()
               if k in RESUME_FIELDS})
  diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
  if diff:
    shown = ', '.join(f'{k} ({saved.get(k)!r} -> {now.get(k)!r})' for k in diff[:6])
    raise ValueError(f'workdir: {workdir} holds checkpoints of a different experiment; '
                     f'differing fields: {shown}{" ..." if len(diff) > 6 else ""}; '
                     'allowed: the same config, or a new workdir')
  if config.num_train_steps < latest:
    raise ValueError(f'num_train_steps: got {config.num_train_steps}; allowed: >= {latest}, '
                     f'the step of the latest checkpoint in {workdir} (or a new workdir)')
  return saved_config


def _step_metadata(ckpts: str, step: int) -> dict:
  """``{'config': ..., 'data_fingerprint': ...}`` saved with ``step`` ({} if none)."""
  path = os.path.join(ckpts, str(step), 'config', 'metadata')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def step_config(workdir: str, step: int) -> ml_collections.ConfigDict | None:
  """The config saved with ``step`` (None for steps saved without one)."""
  config = _step_metadata(checkpoint_dir(workdir), step).get('config')
  return ml_collections.ConfigDict(config) if isinstance(config, dict) else None


def saved_data_fingerprint(workdir: str, step: int) -> str:
  """The data fingerprint saved with ``step`` ('' if none was)."""
  return _step_metadata(checkpoint_dir(workdir), step).get('data_fingerprint', '')


def pending_eval(workdir: str, step: int) -> bool:
  """Whether ``step`` was saved before its evaluation finished (a preemption)."""
  return bool(_step_metadata(checkpoint_dir(workdir), step).get('pending_eval', False))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """``<workdir>/config.json``; ValueError naming the file if it is not one."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      config = json.load(f)
    if not isinstance(config, dict) or 'model' not in config:
      raise ValueError('no model field')
  except ValueError as e:
    raise ValueError(f'workdir: {path} is not a posjax config ({type(e).__name__}: '
                     f'{str(e)[:80]}); allowed: the config.json a run wrote (delete it to '
                     'resume from the configs saved with the checkpoints)') from None
  # Runs saved before model.scan_layers existed ran their layers plain.
  config['model'].setdefault('scan_layers', False)
  return ml_collections.ConfigDict(config)
