"""Experiment suites: one command trains every run of a published comparison.

  runner      the plan of runs, resuming, the summary (``run_suite``)
  cli         the flags every suite shares, ``--config.<field>=`` and ``--help``
  suite_dir   suite.json, the runs' status.json, one runner per suite (its lock), results.md
  launchers   how the runs execute: local processes or a SLURM job array (submitit)
  process     one run as a process: its log, its status, Ctrl-C / SIGTERM (``STOP``)
  report      every run as a ``RunRecord``; tables, markdown and CSV

The suite definitions themselves are the scripts in the top-level
``experiments/`` folder. Imports ``config_lib`` and ``workdir`` only: a suite
trains and evaluates through the command line (``python -m posjax.main`` /
``posjax.evaluate``), never by importing ``training``.
"""
