"""A trained run restored for analysis: config and params on the CPU, without the
optimizer (notebooks, ``posjax.analysis.measures``, ``posjax.evaluate``)."""
from __future__ import annotations

import collections

import flax.linen as nn
import jax

from posjax import models, tasks
from posjax.workdir import run_config
from posjax.workdir.checkpoints import restore_params

Analysis = collections.namedtuple('Analysis', ['config', 'params', 'step'])


def load_for_analysis(workdir: str, step: int | None = None) -> Analysis:
  """(config, params, step) restored on the CPU, without the optimizer."""
  latest = run_config.latest_step(workdir)
  config = ((latest is not None and run_config.step_config(workdir, step or latest))
            or run_config.load_config(workdir))
  model = models.build(models.ModelConfig.from_config(config.model))
  task = tasks.for_config(config)
  args, kwargs = task.model_inputs(task.dummy_batch(min(8, config.seq_len)))
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  shapes = jax.eval_shape(lambda k: nn.unbox(model.init(
      {'params': k}, *args, **kwargs, train=False)['params']), jax.random.key(0))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), shapes)
  params, step = restore_params(workdir, abstract, step)
  return Analysis(config=config, params=params, step=step)
