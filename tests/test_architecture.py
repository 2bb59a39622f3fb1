"""The layout of posjax/: no import circle between its modules, each package
imports only the packages below it (as its ``__init__`` docstring says), the top
level holds only the entry points, and no module nears the 400-line limit.

Read from the source with ``ast`` (nothing is imported), so every import counts,
including those inside functions: a late import hides a circle, it does not
remove it.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'posjax')
MAX_LINES = 380  # The limit is 400; a module this close to it wants a seam.

# What each part of posjax may import (besides itself). The package docstrings
# say the same in words; this table is what holds them to it.
ALLOWED = {
    'encodings': set(),
    'data': set(),
    'models': {'encodings'},
    'tasks': {'data'},
    'analysis': {'models', 'encodings'},
    'workdir': {'models', 'tasks'},  # restore.load_for_analysis builds the model.
    'training': {'models', 'tasks', 'workdir'},
    'suites': {'config_lib', 'workdir'},  # Training only through the CLI.
    'config_lib': {'encodings'},
    'main': {'config_lib', 'training', 'workdir'},
    'evaluate': {'main', 'training', 'workdir'},
}


def _modules() -> dict[str, str]:
  """``{dotted name: path}`` of every module under posjax/ (packages by __init__)."""
  found = {}
  for folder, _, files in os.walk(PKG):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
        name = '.'.join(rel[:-1] if rel[-1] == '__init__' else rel)
        found[name] = os.path.join(folder, f)
  return found


def _imports(path: str, modules) -> set[str]:
  """The posjax modules ``path`` imports anywhere in it, plus the packages whose
  ``__init__`` such an import runs (those outside the importer's own package)."""
  me = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')
  targets = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      targets.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        sub = f'{node.module}.{a.name}'
        targets.add(sub if sub in modules else node.module)
  out = set()
  for t in targets:
    if not t.startswith('posjax.'):
      continue
    parts = t.split('.')
    for n in range(2, len(parts) + 1):  # Parent packages' __init__ run first.
      parent = '.'.join(parts[:n])
      if parent in modules and parent != me and not me.startswith(parent + '.'):
        out.add(parent)
  return out


def _graph():
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}


def _cycles(graph) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1 or v in graph.get(v, ()):
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_circle():
  graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert _cycles(graph) == [['a', 'b', 'c']]
  assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_circle_in_posjax():
  graph = _graph()
  assert 'posjax.models.attention' in graph and graph['posjax.main']
  cycles = _cycles(graph)
  assert not cycles, 'import circles: ' + '; '.join(' <-> '.join(c) for c in cycles)


def _part(module: str) -> str:
  return module.split('.')[1]


def test_each_package_imports_only_what_its_docstring_allows():
  graph = _graph()
  assert set(ALLOWED) == {_part(m) for m in graph if m != 'posjax'}
  bad = sorted(f'{m} -> {t}' for m, targets in graph.items() for t in targets
               if m != 'posjax' and _part(t) != _part(m) and _part(t) not in ALLOWED[_part(m)])
  assert not bad, 'imports across the layers: ' + ', '.join(bad)


def test_the_top_level_holds_only_the_entry_points():
  top = sorted(f for f in os.listdir(PKG) if f.endswith('.py'))
  assert top == ['__init__.py', 'config_lib.py', 'evaluate.py', 'main.py']


@pytest.mark.parametrize('package', sorted(p for p in ALLOWED if os.path.isdir(
    os.path.join(PKG, p))))
def test_every_package_says_what_lives_there_and_what_it_may_import(package):
  doc = ast.get_docstring(ast.parse(open(os.path.join(PKG, package, '__init__.py')).read()))
  assert doc and 'import' in doc.lower(), f'posjax/{package}/__init__.py: no docstring on imports'


def test_no_module_near_the_line_limit():
  long = {os.path.relpath(p, ROOT): n for p in _modules().values()
          if (n := sum(1 for _ in open(p))) > MAX_LINES}
  assert not long, f'modules over {MAX_LINES} lines (limit 400; split along a seam): {long}'
