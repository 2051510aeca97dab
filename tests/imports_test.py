"""No import circles: between the modules of `fedgan_jax/` and `benchmarks/`, and between the
sub-packages (folders) of `fedgan_jax/`.

Imports are read with `ast`, so nothing is imported and the test takes well under a second.
Every import counts, also those inside functions: a deferred import hides a circle from Python
at load time but not from a reader, who still has to understand both folders at once.
"""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('fedgan_jax', 'benchmarks')


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
  """The modules of `known` that `path` imports (`from a import b` names `a.b` when it is one)."""
  found = set()
  package = module_name(path).rsplit('.', 1)[0] if path.name != '__init__.py' else (
      module_name(path))
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # Relative: resolve against this module's package.
        anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      names = [f'{base}.{alias.name}' for alias in node.names] + [base]
    else:
      continue
    for name in names:
      # `import a.b.c` imports a.b.c (and its parents, which are not what the code uses).
      while name and name not in known:
        name = name.rpartition('.')[0]
      if name:
        found.add(name)
  found.discard(module_name(path))
  return found


def module_graph() -> dict[str, set[str]]:
  paths = [p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob('*.py'))]
  known = {module_name(p) for p in paths}
  return {module_name(p): imported_modules(p, known) for p in paths}


def folder(module: str) -> str:
  """The node a module stands for in the folder graph: its sub-package of `fedgan_jax`
  (`fedgan_jax.federated`), or the module itself when it sits at the top of a package."""
  parts = module.split('.')
  return '.'.join(parts[:2]) if len(parts) > 2 else module


def folder_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for module, imports in modules.items():
    edges = graph.setdefault(folder(module), set())
    edges.update(folder(i) for i in imports if folder(i) != folder(module))
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as `[a, b, ..., a]`, or None (depth-first search, three colours)."""
  state: dict[str, int] = {}  # 1: on the current path, 2: finished.
  path: list[str] = []

  def visit(node):
    state[node] = 1
    path.append(node)
    for target in sorted(graph.get(node, ())):
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        cycle = visit(target)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_find_cycle_finds_a_circle_and_accepts_a_chain():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert folder('fedgan_jax.federated.algorithm') == 'fedgan_jax.federated'
  assert folder('fedgan_jax.train') == 'fedgan_jax.train'


def test_deferred_and_relative_imports_are_read(tmp_path, monkeypatch):
  monkeypatch.setattr(__import__(__name__), 'REPO_ROOT', tmp_path)
  (tmp_path / 'pkg' / 'sub').mkdir(parents=True)
  (tmp_path / 'pkg' / 'sub' / 'a.py').write_text('def f():\n  from pkg.sub import b\n')
  (tmp_path / 'pkg' / 'sub' / 'b.py').write_text('from . import a\n')
  known = {'pkg.sub.a', 'pkg.sub.b'}
  assert imported_modules(tmp_path / 'pkg' / 'sub' / 'a.py', known) == {'pkg.sub.b'}
  assert imported_modules(tmp_path / 'pkg' / 'sub' / 'b.py', known) == {'pkg.sub.a'}


def test_no_import_circle_between_modules():
  cycle = find_cycle(module_graph())
  assert cycle is None, ' -> '.join(cycle)


def test_no_import_circle_between_the_folders_of_fedgan_jax():
  graph = {node: edges for node, edges in folder_graph(module_graph()).items()
           if node.startswith('fedgan_jax')}
  assert 'fedgan_jax.federated' in graph and 'fedgan_jax.privacy' in graph
  cycle = find_cycle(graph)
  assert cycle is None, ' -> '.join(cycle)


if __name__ == '__main__':
  pytest.main([__file__])
