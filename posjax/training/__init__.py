"""Training: everything between a validated config and a finished run.

  loop          ``train_and_evaluate(config, workdir)``: the loop, evaluation, profiling
  steps         ``Trainer``: the compiled train / eval steps and state on a mesh
  optim         AdamW, clipping and the learning-rate schedules (optax)
  sharding      the device mesh and shardings from logical axis names
  metrics       TensorBoard event files and ``metrics.jsonl``
  memory        out-of-memory as one line, checked on the compiled program
  distributed   ``jax.distributed`` start-up and preemption agreed by every process
  validation    every check of a config that can run before anything is written

Imports ``models``, ``tasks`` and ``workdir``; nothing imports it but the entry
points (``posjax.main``, ``posjax.evaluate``).
"""
