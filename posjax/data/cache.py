"""Lists and prunes the local_text cache (``posjax.data.text.local_text_dir``).

  python -m posjax.data.cache --list [--cache_dir=DIR]
  python -m posjax.data.cache --prune [--older_than=DAYS] [--cache_dir=DIR]

``--list`` prints one line per entry: its key, state, disk size, how many files it
was built from, when it was last used, and its corpus and size. ``--prune`` removes
the entries that are neither ``current`` nor ``building`` (their corpus changed or is
gone, a file of theirs is missing, they have no record, or an interrupted build left
them untouched for a day), and with ``--older_than=DAYS`` also those unused for DAYS days. The
cache is ``$POSJAX_CACHE_DIR`` (default ``~/.cache/posjax``) unless ``--cache_dir``
says otherwise. Bad input is one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

from absl import flags

from posjax.data import build, prepared, text

DAY = 86400.0
KEEP = ('current', 'building')  # States --prune keeps (unless --older_than).


@dataclasses.dataclass(frozen=True)
class Entry:
  """One directory of the cache."""
  key: str
  dir: str
  state: str  # 'current', or why it could go.
  bytes: int
  last_used: float  # Seconds since the epoch.
  record: dict  # What it was built from ({} without a record).

  def line(self) -> str:
    r = self.record
    corpus = (f'{r["path"] or "the standard library"} ({r["size"]})' if r else '?')
    files = f'{r["documents"]} file{"s" * (r["documents"] != 1)}' if r else '? files'
    used = time.strftime('%Y-%m-%d %H:%M', time.localtime(self.last_used))
    return (f'{self.key}  {self.state}  {self.bytes / 2**20:.1f} MiB  {files}  '
            f'last used {used}  {corpus}')


def entries(cache_dir: str) -> list[Entry]:
  """The cache's entries, oldest use first."""
  root = os.path.join(cache_dir, 'local_text')
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  found = [_entry(n, os.path.join(root, n)) for n in names]
  return sorted(found, key=lambda e: e.last_used)


def _entry(key: str, d: str) -> Entry:
  file = os.path.join(d, text.RECORD)
  try:
    with open(file) as f:
      record, last_used = json.load(f), os.path.getmtime(file)
  except (OSError, ValueError):
    record, last_used = {}, _newest_mtime(d)
  return Entry(key, d, _state(key, d, record, last_used), _bytes(d), last_used, record)


def _state(key: str, d: str, record: dict, last_used: float) -> str:
  if '.tmp-' in key or '.old-' in key:  # A private build directory (text._build).
    return 'building' if time.time() - last_used < DAY else 'left over by an interrupted build'
  if not record:
    return 'no record'
  try:
    now = text.corpus_fingerprint(record['path'])
  except ValueError:
    return 'stale (corpus gone)'
  if now != record['corpus']:
    return 'stale (corpus changed)'
  broken = prepared.damage(text.LocalText(config=record['size'], data_dir=d,
                                          path=record['path']))
  return f'damaged ({broken})' if broken else 'current'


def _walk(d: str):
  for parent, _, files in os.walk(d):
    yield from (os.path.join(parent, f) for f in files)


def _bytes(d: str) -> int:
  return sum(os.path.getsize(f) for f in _walk(d))


def _newest_mtime(d: str) -> float:
  return max((os.path.getmtime(f) for f in _walk(d)), default=os.path.getmtime(d))


def prune(cache_dir: str, older_than: float | None = None) -> list[Entry]:
  """Removes the entries that are not current, or unused for ``older_than`` days."""
  now = time.time()
  gone = [e for e in entries(cache_dir) if e.state not in KEEP or (
      older_than is not None and now - e.last_used > older_than * DAY)]
  for e in gone:
    shutil.rmtree(e.dir, ignore_errors=True)
  return gone


def _flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_bool('list', False, 'Print one line per cache entry.', flag_values=fv)
  flags.DEFINE_bool('prune', False, 'Remove the entries that are not current.', flag_values=fv)
  flags.DEFINE_float('older_than', None, 'With --prune: also remove the entries unused '
                     'for this many days.', flag_values=fv)
  flags.DEFINE_string('cache_dir', None, 'The cache (default $POSJAX_CACHE_DIR, else '
                      '~/.cache/posjax).', flag_values=fv)
  return fv


def main(argv: list[str]) -> int:
  fv = _flags()
  args = build.parse(fv, argv, __doc__)
  if isinstance(args, int):
    return args
  if len(args) > 1 or fv.list == fv.prune:
    return build.fail(f'flags: got {" ".join(argv[1:]) or "nothing"}; allowed: --list, or '
                 '--prune [--older_than=DAYS]')
  if fv.older_than is not None and (fv.list or fv.older_than < 0):
    return build.fail(f'older_than: got {fv.older_than}{" with --list" if fv.list else ""}; '
                 'allowed: a number of days >= 0, with --prune')
  cache_dir = os.path.expanduser(fv.cache_dir or text.cache_dir())
  if fv.list:
    found = entries(cache_dir)
    for e in found:
      print(e.line())
    print(f'{len(found)} entries, {sum(e.bytes for e in found) / 2**20:.1f} MiB in {cache_dir}')
    return 0
  gone = prune(cache_dir, fv.older_than)
  for e in gone:
    print(f'removed {e.line()}')
  print(f'pruned {len(gone)} entries, {sum(e.bytes for e in gone) / 2**20:.1f} MiB '
        f'from {cache_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
