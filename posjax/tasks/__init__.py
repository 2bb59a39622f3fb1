"""What a model is trained on, behind one registry (like the encodings).

  lm               next-token prediction over packed text; perplexity, bits per byte
  sequence         answer tokens of ``inputs SEP targets`` (length generalisation)
  classification   one label per example (LRA ListOps / Text / Image / Pathfinder)
  matching         one label per pair of documents (LRA Retrieval)

Adding a task is one module with a ``posjax.tasks.base.Task`` subclass and one
line in ``_REGISTRY``; the trainer, inputs and validation never branch on names.
Imports ``posjax.data`` (a task's inputs); the model is the trainer's business.
"""
from __future__ import annotations

from posjax.tasks.base import Task
from posjax.tasks.classification import Classification, Matching
from posjax.tasks.lm import LanguageModelling
from posjax.tasks.sequence import Sequence

_REGISTRY: dict[str, type[Task]] = {
    cls.name: cls for cls in (LanguageModelling, Sequence, Classification, Matching)}


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> type[Task]:
  if name not in _REGISTRY:
    raise ValueError(f'task: got {name!r}; allowed: {", ".join(names())}')
  return _REGISTRY[name]


def for_config(config) -> Task:
  """The task of an experiment config, holding that config."""
  return get(config.get('task', 'lm'))(config)
