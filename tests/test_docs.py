"""The documentation's links resolve, and the README stays a short front door.

Every relative link (``[text](target)``, ``![alt](target)``) in README.md, docs/*.md,
experiments/README.md and notebooks/README.md must name an existing file or folder,
relative to the file that holds it; a ``#anchor`` into a markdown file must name one
of its headings, slugged as GitHub does. Plain text only: no JAX, no posjax import.
"""
import glob
import os
import re
import sys
import urllib.parse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
MAIN_JOB = 'python -m posjax.main --config=configs/lm.py:runlocal --workdir=/tmp/posjax_lm'
TEST_COMMAND = 'python -m pytest -q -n 2 tests'
MAX_README_LINES = 300

_FENCE = re.compile(r'^\s*(```|~~~)')
_CODE_SPAN = re.compile(r'(`+)(.+?)\1')
_LINK = re.compile(r'!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_HEADING = re.compile(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$')
_SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')


def doc_files() -> list[str]:
  files = [README, os.path.join(REPO, 'experiments', 'README.md'),
           os.path.join(REPO, 'notebooks', 'README.md')]
  return files + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))


def prose_lines(text: str):
  """(line number, line) outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, line


def links(text: str) -> list[tuple[int, str]]:
  """(line number, target) of every markdown link and image outside code."""
  found = []
  for number, line in prose_lines(text):
    # A code span's content is not markdown, but a link's text may be a code span.
    line = _CODE_SPAN.sub('code', line)
    found += [(number, m.group(2)) for m in _LINK.finditer(line)]
  return found


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: its text lowercased, punctuation other than
  hyphens and underscores dropped, each space a hyphen."""
  text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)  # A link reads as its text.
  text = re.sub(r'[^\w\- ]', '', text.strip().lower())
  return text.replace(' ', '-')


def anchors(path: str) -> set[str]:
  """Every heading anchor of a markdown file (repeated headings get -1, -2, ...)."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  seen: dict[str, int] = {}
  result = set()
  for _, line in prose_lines(text):
    m = _HEADING.match(line)
    if not m:
      continue
    base = slug(m.group(2))
    n = seen.get(base, 0)
    seen[base] = n + 1
    result.add(base if n == 0 else f'{base}-{n}')
  return result


def broken_links(path: str) -> list[str]:
  """One line per link in ``path`` that does not resolve."""
  with open(path, encoding='utf-8') as f:
    text = f.read()
  where = os.path.relpath(path, REPO)
  problems = []
  for number, target in links(text):
    if _SCHEME.match(target) or target.startswith('//'):
      continue  # http(s), mailto and other absolute URLs are not checked.
    file_part, _, anchor = target.partition('#')
    file_part = urllib.parse.unquote(file_part)
    resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if file_part else path)
    if os.path.commonpath([REPO, resolved]) != REPO:
      problems.append(f'{where}:{number}: {target}: outside the repository')
    elif not os.path.exists(resolved):
      problems.append(f'{where}:{number}: {target}: no such file or folder')
    elif anchor and resolved.endswith('.md') and os.path.isfile(resolved):
      if urllib.parse.unquote(anchor).lower() not in anchors(resolved):
        problems.append(f'{where}:{number}: {target}: no heading #{anchor} in '
                        f'{os.path.relpath(resolved, REPO)}')
  return problems


def test_docs_exist():
  names = [os.path.relpath(p, REPO) for p in doc_files()]
  for path in doc_files():
    assert os.path.isfile(path), f'missing: {os.path.relpath(path, REPO)}'
  assert os.path.join('docs', 'README.md') in names, 'docs/README.md: the index is missing'


@pytest.mark.parametrize('path', doc_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_resolve(path):
  problems = broken_links(path)
  assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_readme_is_a_short_front_door():
  with open(README, encoding='utf-8') as f:
    text = f.read()
  lines = text.splitlines()
  assert len(lines) <= MAX_README_LINES, (
      f'README.md: {len(lines)} lines; allowed: at most {MAX_README_LINES} '
      '(move details into docs/)')
  assert MAIN_JOB in text, f'README.md must show the main job: {MAIN_JOB}'
  # CI runs exactly the test command written in the README, in a bash block.
  fenced, in_bash, commands = False, False, []
  for line in lines:
    if _FENCE.match(line):
      fenced, in_bash = not fenced, (not fenced) and line.strip() == '```bash'
    elif in_bash:
      commands.append(line.strip())
  assert TEST_COMMAND in commands, (
      f'README.md must show the test command in a ```bash block: {TEST_COMMAND}')
  assert MAIN_JOB in commands, (
      f'README.md must show the main job in a ```bash block: {MAIN_JOB}')


# The checker itself, on made-up files: a broken link must fail.
def test_checker_catches_broken_links(tmp_path, monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], 'REPO', str(tmp_path))
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'page.md').write_text('# A page\n\n## Second: part (two)\n')
  doc = tmp_path / 'doc.md'
  doc.write_text(
      '# Title\n'
      '[ok](sub/page.md) [ok](sub/page.md#second-part-two) [ok](#title) [ok](sub/)\n'
      '![ok](sub/page.md) [web](https://example.com/x) `[code](missing.md)`\n'
      '```\n[fenced](missing.md)\n```\n'
      '[gone](missing.md) ![gone](sub/missing.png) [bad anchor](sub/page.md#nope)\n'
      '[escape](../outside.md)\n')
  problems = broken_links(str(doc))
  assert len(problems) == 4, problems
  assert any('missing.md' in p for p in problems)
  assert any('missing.png' in p for p in problems)
  assert any('#nope' in p for p in problems)
  assert any('outside the repository' in p for p in problems)


def test_slug_follows_github():
  assert slug('`rope_scaling`: position interpolation and YaRN') == (
      'rope_scaling-position-interpolation-and-yarn')
  assert slug("cudnn and splash: the vendors' fused kernels") == (
      'cudnn-and-splash-the-vendors-fused-kernels')
  assert slug('A run\'s workdir') == 'a-runs-workdir'
  assert slug('GPU benchmark (not run yet)') == 'gpu-benchmark-not-run-yet'
