"""Damage detection for checkpoint steps: per-file checksums and finiteness.

``write_manifest(step_dir)`` records the size and CRC32 of every file of a
finished step (``posjax_checksums.json`` inside it); ``verify(step_dir)``
recomputes them before a restore and raises ``DamagedCheckpointError`` naming
the first file that differs, so bytes overwritten inside an array file are
caught even where the array format would read them back. ``first_nonfinite``
names the first leaf of a restored state holding NaN or Inf. A step without a
manifest (written by an older posjax, or killed between the save and the
manifest) is restored unverified; its finiteness is still checked.
"""
from __future__ import annotations

import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np

MANIFEST = 'posjax_checksums.json'
_CHUNK = 1 << 22


class DamagedCheckpointError(RuntimeError):
  """A checkpoint step's files differ from what was written, or hold NaN/Inf."""


def _crc32(path: str) -> int:
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(step_dir: str) -> list[str]:
  out = []
  for d, _, fs in os.walk(step_dir):
    out.extend(os.path.relpath(os.path.join(d, f), step_dir) for f in fs if f != MANIFEST)
  return sorted(out)


def write_manifest(step_dir: str) -> None:
  """Records ``{file: [size, crc32]}`` of a finished step (atomically)."""
  sums = {f: [os.path.getsize(os.path.join(step_dir, f)), _crc32(os.path.join(step_dir, f))]
          for f in _files(step_dir)}
  path = os.path.join(step_dir, MANIFEST)
  with open(path + '.tmp', 'w') as fh:
    json.dump(sums, fh)
  os.replace(path + '.tmp', path)


def verify(step_dir: str, items: tuple[str, ...] | None = None) -> bool:
  """True if the step (or just its ``items``, e.g. ``('params',)``) matches
  its manifest, False if it has none; DamagedCheckpointError naming the first
  file that differs."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return False
  try:
    with open(path) as fh:
      sums = json.load(fh)
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(f'{MANIFEST} unreadable ({type(e).__name__})') from None
  for rel, (size, crc) in sorted(sums.items()):
    if items is not None and rel.split(os.sep)[0] not in items:
      continue
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      raise DamagedCheckpointError(f'{rel} is missing')
    if os.path.getsize(full) != size or _crc32(full) != crc:
      raise DamagedCheckpointError(f'{rel} differs from its checksum')
  return True


def first_nonfinite(tree) -> str | None:
  """``'params/decoder/...'``: the first floating leaf with a NaN or Inf."""
  leaves = [(p, x) for p, x in jax.tree.leaves_with_path(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  # One program for all leaves: per-leaf ops deadlock multi-process CPU runs.
  flags = jax.device_get(jax.jit(lambda xs: [jnp.isfinite(x).all() for x in xs])(
      [x for _, x in leaves]))
  for (path, _), ok in zip(leaves, flags):
    if not bool(np.asarray(ok)):
      return jax.tree_util.keystr(path, simple=True, separator='/')
  return None
