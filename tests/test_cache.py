"""The local_text cache CLI: entries listed with their corpus, size and last use;
stale, damaged and left-over entries pruned; old ones with --older_than."""
import os
import shutil
import time

import pytest

from posjax.data import cache, text


def _corpus(root, n):
  root.mkdir()
  for i in range(n):
    (root / f'doc{i:02d}.txt').write_text(f'document {i} ' * 10)
  return str(root)


def _age(entry, days):
  """Makes ``entry`` look last used ``days`` ago."""
  then = time.time() - days * cache.DAY
  os.utime(os.path.join(entry, text.RECORD), (then, then))


def _cli(capsys, *args):
  rc = cache.main(['cache', *args])
  out, err = capsys.readouterr()
  return rc, out.splitlines(), err


def test_list_and_prune_stale_left_over_and_old_entries(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'cache'))
  kept, edited, deleted = (_corpus(tmp_path / n, 12) for n in ('kept', 'edited', 'deleted'))
  entries = {p: text.local_text_dir(p) for p in (kept, edited, deleted)}
  _age(entries[kept], 3)
  text.local_text_dir(kept)  # A read records the use.
  assert time.time() - os.path.getmtime(os.path.join(entries[kept], text.RECORD)) < 60
  with open(os.path.join(edited, 'doc03.txt'), 'a') as f:
    f.write('more')
  shutil.rmtree(deleted)
  left = entries[kept] + '.tmp-0123'  # What a killed build leaves.
  os.makedirs(os.path.join(left, 'local_text'))
  then = time.time() - 2 * cache.DAY
  os.utime(left, (then, then))
  capsys.readouterr()  # The builds' lines.
  rc, out, err = _cli(capsys, '--list')
  assert rc == 0 and not err
  states = {line.split('  ')[0]: line for line in out[:-1]}
  assert states.keys() == {os.path.basename(e) for e in [*entries.values(), left]}
  line = states[os.path.basename(entries[kept])]
  assert line.endswith(f'  {kept} (full)') and '  current  ' in line and '  12 files  ' in line
  assert time.strftime('last used %Y-%m-%d ') in line
  assert '  stale (corpus changed)  ' in states[os.path.basename(entries[edited])]
  assert '  stale (corpus gone)  ' in states[os.path.basename(entries[deleted])]
  assert '  left over by an interrupted build  ' in states[os.path.basename(left)]
  assert out[-1].startswith('4 entries, ')

  rc, out, _ = _cli(capsys, '--prune')
  assert rc == 0 and len(out) == 4 and out[-1].startswith('pruned 3 entries, ')
  assert os.listdir(tmp_path / 'cache' / 'local_text') == [os.path.basename(entries[kept])]
  _age(entries[kept], 10)
  assert _cli(capsys, '--prune', '--older_than=30')[1][-1].startswith('pruned 0 entries')
  assert _cli(capsys, '--prune', '--older_than=7')[1][-1].startswith('pruned 1 entries')
  assert os.listdir(tmp_path / 'cache' / 'local_text') == []


def test_a_damaged_entry_is_listed_and_pruned_in_the_cache_dir_given(tmp_path, monkeypatch,
                                                                      capsys):
  c = str(tmp_path / 'cache')
  monkeypatch.setenv('POSJAX_CACHE_DIR', c)
  entry = text.local_text_dir(_corpus(tmp_path / 'c', 12))
  shard = 'local_text-train.array_record-00000-of-00001'
  os.remove(os.path.join(entry, 'local_text', 'full', '1.0.0', shard))
  monkeypatch.setenv('POSJAX_CACHE_DIR', str(tmp_path / 'elsewhere'))
  assert _cli(capsys, '--list')[1] == [f'0 entries, 0.0 MiB in {tmp_path / "elsewhere"}']
  rc, out, _ = _cli(capsys, '--list', f'--cache_dir={c}')
  assert rc == 0 and f'  damaged ({shard} is missing)  ' in out[0]
  _cli(capsys, '--prune', f'--cache_dir={c}')
  assert not os.path.exists(entry)


@pytest.mark.parametrize('args, error', [
    ([], 'error: flags: got nothing; allowed: --list, or --prune [--older_than=DAYS]'),
    (['--list', '--prune'], 'error: flags: got --list --prune; allowed: '),
    (['--prune', '--older_than=-1'], 'error: older_than: got -1.0; allowed: a number of days'),
    (['--list', '--older_than=3'], 'error: older_than: got 3.0 with --list; allowed: '),
    (['--prune', '--older_than=x'], 'error: flags: flag --older_than=x: '),
    (['--bogus'], "error: flags: Unknown command line flag 'bogus'; allowed: --list, ")])
def test_bad_flags_are_one_line_and_exit_2(capsys, args, error):
  rc, out, err = _cli(capsys, *args)
  assert rc == 2 and not out and err.startswith(error) and err.count('\n') == 1, err
