"""Run logs: TensorBoard event files and ``metrics.jsonl`` in the workdir, and
the console progress line (process 0 only)."""
from __future__ import annotations

import json
import os
import sys

import jax


class MetricWriter:
  """TensorBoard event files and ``metrics.jsonl`` in the workdir (process 0)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(logdir=workdir)
      self.jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

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
