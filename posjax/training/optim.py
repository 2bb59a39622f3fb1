"""The optimizer: AdamW with global-norm clipping, a warmup + cosine or rsqrt
schedule over ``schedule_steps`` (0: ``num_train_steps``), and gradient
accumulation. Schedules count optimizer updates (one per ``grad_accum_steps``
batches); after ``schedule_steps`` the cosine stays at its final rate, so an
extended run continues smoothly."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ('cosine', 'rsqrt')


def schedule_steps(config) -> int:
  """The schedule's length in batches."""
  return int(config.get('schedule_steps') or 0) or int(config.num_train_steps)


def make_schedule(config) -> optax.Schedule:
  steps = max(schedule_steps(config) // config.grad_accum_steps, 1)
  warmup = config.warmup_steps // config.grad_accum_steps
  lr = config.learning_rate
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=min(warmup, steps), decay_steps=steps, end_value=0.1 * lr)
  # rsqrt: linear warmup to lr, then lr * sqrt(w / step); a warmup longer than
  # training (LRA Retrieval) just never reaches the peak.
  w = max(warmup, 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, w),
       lambda s: lr * jnp.sqrt(w / (s + w))], [w])


def make_optimizer(config) -> optax.GradientTransformation:
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip) if config.grad_clip > 0 else optax.identity(),
      optax.adamw(make_schedule(config), b1=config.get('adam_b1', 0.9),
                  b2=config.get('adam_b2', 0.98),
                  weight_decay=config.get('weight_decay', 0.0),
                  mask=lambda p: jax.tree.map(lambda x: jnp.ndim(x) > 1, p)))
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx
