"""The compiled pieces of training: state, train and eval steps on a mesh.

``Trainer`` holds the mesh, model, optimizer and shardings of one experiment.
The state is initialised under ``jax.eval_shape`` and created already sharded
by a ``jax.jit`` with ``out_shardings`` (from the parameters' logical axis names
and ``config.logical_axis_rules``); the train step is a ``jax.jit`` with
explicit in/out shardings that donates the state.
"""
from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from posjax import tasks
from posjax.training import memory, optim, sharding


def _boxed_init(model, tx, task, config, rng):
  """The boxed (logically annotated) train state."""
  args, kwargs = task.model_inputs(task.dummy_batch(config.seq_len))
  params = model.init({'params': rng}, *args, **kwargs, train=False)['params']
  return {'params': params, 'opt_state': tx.init(params),
          'step': jnp.zeros((), jnp.int32),
          'rng': jax.random.key_data(jax.random.key(config.seed + 1))}


def train_step(state, batch, *, model, task, tx, schedule, grad_accum_steps):
  rng = jax.random.wrap_key_data(state['rng'])
  k_dropout, k_positions = jax.random.split(jax.random.fold_in(rng, state['step']))
  args, kwargs = task.model_inputs(batch)

  def loss_fn(params):
    logits = model.apply({'params': params}, *args, **kwargs, train=True,
                         rngs={'dropout': k_dropout, 'positions': k_positions})
    sums = task.sums(logits, batch)
    return sums['loss_sum'] / jnp.maximum(sums['count'], 1.0), sums

  (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  metrics = {'loss': loss, **sums,
             'grad_norm': optax.tree.norm(grads),
             'update_norm': optax.tree.norm(updates),
             'param_norm': optax.tree.norm(params),
             'learning_rate': schedule(state['step'] // grad_accum_steps)}
  new_state = {'params': params, 'opt_state': opt_state,
               'step': state['step'] + 1, 'rng': state['rng']}
  return new_state, metrics


def eval_step(params, batch, index, *, model, task, seed):
  """Sums of one eval batch. The ``positions`` rng (used by randomized
  positions, which Ruoss et al. also draw at test time) is fixed by the batch's
  index: every evaluation of a run sees the same draws."""
  args, kwargs = task.model_inputs(batch)
  rng = jax.random.fold_in(jax.random.key(seed + 2), index)
  return task.sums(model.apply({'params': params}, *args, **kwargs, train=False,
                               rngs={'positions': rng}), batch)


class Trainer:
  """Holds the mesh, model, shardings and jitted functions of one experiment."""

  def __init__(self, config, mcfg=None, task=None, devices=None):
    from posjax import models
    self.config = config
    self.mcfg = mcfg or models.ModelConfig.from_config(config.model)
    self.model = models.build(self.mcfg)
    self.task = task or tasks.for_config(config)
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.tx = optim.make_optimizer(config)
    self.schedule = optim.make_schedule(config)
    init = functools.partial(_boxed_init, self.model, self.tx, self.task, config)
    self.rng = jax.random.key(config.seed)
    with self._context(rules=False):
      boxed = jax.eval_shape(init, self.rng)
    self.rules = sharding.complete_rules(config.logical_axis_rules, boxed)
    self.state_shardings = sharding.logical_shardings(boxed, self.mesh, self.rules)
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed), self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    batch_shardings = self.batch_sharding  # A prefix: every batch array, split on rows.
    replicated = sharding.replicated(self.mesh)
    self._init = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=self.state_shardings)
    self._train_step = jax.jit(
        functools.partial(train_step, model=self.model, task=self.task, tx=self.tx,
                          schedule=self.schedule,
                          grad_accum_steps=config.grad_accum_steps),
        in_shardings=(self.state_shardings, batch_shardings),
        out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self._compiled_step = None
    self._eval_step = jax.jit(
        functools.partial(eval_step, model=self.model, task=self.task, seed=config.seed),
        in_shardings=(self.state_shardings['params'], batch_shardings, replicated),
        out_shardings=replicated)

  def _context(self, rules: bool = True):
    # Initialisation runs without the rules: its shardings come from
    # ``out_shardings`` (and flax would constrain DenseGeneral's kernels
    # before they are reshaped); activations are constrained in the steps.
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    if rules:
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self):
    with self._context(rules=False):
      return self._init(self.rng)

  def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in local_batch.items()}

  def train_step(self, state, batch):
    """One step. The first compiles it and checks that it fits in memory."""
    with self._context():
      batch = self.global_batch(batch)
      if self._compiled_step is None:
        self._compiled_step = memory.compile_checked(self._train_step, state, batch)
      with memory.translate_oom():
        return self._compiled_step(state, batch)

  def evaluate(self, params, eval_sets, stop=None) -> dict[str, float] | None:
    """Metrics of every eval set (one per length, or per split), in one pass.

    ``stop``: asked after each batch once the batch before it has finished (one
    in flight); when it answers True the evaluation is abandoned: None.
    """
    results, index, previous = {}, 0, None
    with self._context():
      for name, batches in eval_sets.items():
        results[name] = []
        for b in batches:
          results[name].append(self._eval_step(params, self.global_batch(b), np.int32(index)))
          index += 1
          if stop is not None:
            jax.block_until_ready(previous)
            if stop():
              return None
            previous = results[name][-1]
    out = {}
    for name, rs in zip(results, jax.device_get(list(results.values()))):  # (Mixed key types.)
      sums = {k: sum(float(r[k]) for r in rs) for k in rs[0]}
      out.update({f'eval/{k}': v for k, v in self.task.summarize(sums, f'@{name}').items()})
    return out
