"""Run logs: TensorBoard event files and ``metrics.jsonl`` in the workdir, and
the console progress line (process 0 only)."""
from __future__ import annotations

import json
import os
import sys

import jax


class MetricWriter:
  """TensorBoard event files and ``metrics.jsonl`` in the workdir (process 0).

  A run resumed at step ``start`` first cuts ``metrics.jsonl`` back to the
  complete records of steps <= ``start`` (a crash can leave a partial last
  line, or records of steps after the checkpoint), and TensorBoard is told to
  purge events after ``start``, so every metric has one curve.
  """

  def __init__(self, workdir: str, start: int = 0):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter
      path = os.path.join(workdir, 'metrics.jsonl')
      _truncate_after(path, start)
      self.tb = SummaryWriter(logdir=workdir, purge_step=start + 1 if start else None)
      self.jsonl = open(path, 'a')

  def write(self, step: int, metrics: dict[str, float]):
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps({'step': step, **metrics}) + '\n')
    self.jsonl.flush()

  def close(self):
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps the complete JSON records of ``path`` with a step <= ``step``."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, 'rb') as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:  # A partial line written by a killed run.
        continue
      if isinstance(record, dict) and record.get('step', 0) <= step:
        kept.append(json.dumps(record) + '\n')
  with open(path + '.tmp', 'w') as f:
    f.writelines(kept)
  os.replace(path + '.tmp', path)


def progress(step: int, total: int, metrics: dict[str, float]):
  if jax.process_index() != 0:
    return
  done = int(30 * step / total)
  line = (f'\r[{"#" * done}{"." * (30 - done)}] step {step}/{total}  '
          f'loss {metrics["train/loss"]:.4f}  '
          f'acc {metrics["train/accuracy"]:.3f}  '
          f'{metrics["train/tokens_per_sec"]:.0f} tok/s  '
          f'{metrics["train/step_time"] * 1e3:.0f} ms/step')
  sys.stderr.write(line)
  sys.stderr.flush()
