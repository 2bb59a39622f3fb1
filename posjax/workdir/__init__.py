"""A run's directory on disk, and everything that reads or writes it.

  lock          one writer at a time; a workdir checked usable before anything is written
  checkpoints   Orbax save / restore of params, optimizer, rng and data iterator
  integrity     checksum manifests and finiteness of checkpoint steps
  run_config    ``config.json`` and the configs saved with each step; may a rerun resume?
  restore       ``load_for_analysis``: params on the CPU, without the optimizer

Imports ``models`` and ``tasks`` (``restore`` builds the model to know the
shapes); the rest of the package imports nothing of posjax.
"""
