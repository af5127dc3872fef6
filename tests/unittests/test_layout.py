"""The package's layout: imports go one way, down the stages, and never in a circle.

Reads every module's import statements (those inside functions too: a lazy import is still a
dependency) with ``ast``, without importing anything.
"""
import ast
import os

import pytest

import gluon_arcface as gaf

PACKAGE = os.path.dirname(os.path.abspath(gaf.__file__))
#: The stages, bottom first; a module may import from its own stage and the ones before it.
STAGES = ('runtime', 'data', 'nn', 'models', 'eval', 'train')


def module_files(root=PACKAGE):
    """``{dotted name: path}`` of every module (a package is its ``__init__``)."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith('.py'):
                rel = os.path.relpath(os.path.join(folder, name), os.path.dirname(root))
                dotted = rel[:-3].replace(os.sep, '.')
                found[dotted[:-len('.__init__')] if dotted.endswith('.__init__') else
                      dotted] = os.path.join(folder, name)
    return found


def import_graph(modules):
    """``{module: set of package modules it imports}``."""
    graph = {}
    for name, path in modules.items():
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith('__init__.py') else name.rsplit('.', 1)[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
                targets.update(b for b in bases if b in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split('.')
                    base = '.'.join(parts[:len(parts) - node.level + 1] +
                                    ([node.module] if node.module else []))
                else:
                    base = node.module
                if base in modules:
                    targets.add(base)
                targets.update(base + '.' + a.name for a in node.names
                               if base + '.' + a.name in modules)
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def stage_of(module):
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None  # None: the package itself


@pytest.fixture(scope='module')
def graph():
    return import_graph(module_files())


def test_no_import_cycle(graph):
    assert len(graph) > 40  # every module was read
    assert find_cycle(graph) is None, 'import cycle: %s' % ' -> '.join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles(graph):
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) is None
    # A lazy import inside a function counts: plant one in a copy of the graph.
    planted = {k: set(v) for k, v in graph.items()}
    planted['gluon_arcface.runtime.errors'].add('gluon_arcface.train.recipe')
    assert find_cycle(planted) is not None


def test_imports_go_down_the_stages(graph):
    top = gaf.__name__
    assert {stage_of(m) for m in graph} == set(STAGES) | {None}
    upward = []
    for module, targets in graph.items():
        if module == top:
            continue  # the package's front door re-exports from every stage
        assert top not in targets, '%s imports the package itself' % module
        rank = STAGES.index(stage_of(module))
        upward += ['%s -> %s' % (module, t) for t in sorted(targets)
                   if stage_of(t) is not None and STAGES.index(stage_of(t)) > rank]
    assert not upward, 'imports up the stages: %s' % '; '.join(upward)


def test_every_module_is_reachable_as_a_gaf_name():
    modules = module_files()
    for name in modules:
        parts = name.split('.')
        if len(parts) == 3 and not parts[2].startswith('_') and parts[2] != 'torch_reference':
            assert getattr(gaf, parts[2]).__name__ == name


def test_architecture_page_lists_every_module():
    page = os.path.join(os.path.dirname(PACKAGE), 'docs', 'architecture.md')
    with open(page, encoding='utf-8') as f:
        text = f.read()
    for name in module_files():
        parts = name.split('.')
        if len(parts) == 2:
            assert '`%s/`' % parts[1] in text, 'docs/architecture.md lacks %s/' % parts[1]
        elif len(parts) == 3 and not parts[2].startswith('_'):
            assert '`%s.py`' % parts[2] in text, 'docs/architecture.md lacks %s' % name
