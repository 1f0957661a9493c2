"""The package's import graph, read from the source with ``ast``: no circles, no underscore names across modules.

Edges are the ablate-internal imports: every one, those inside functions (lazy imports) and ``if
TYPE_CHECKING`` blocks included, since each states a dependency. ``from ablate.x import y`` is an edge to the submodule ``ablate.x.y`` when there is one,
else to the module that defines ``y``: a package ``__init__`` that re-exports ``y`` (``from .m import y``,
or a ``_LAZY`` table of name -> module) is looked through to that module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ablate"


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


MODULES = module_files()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, *, module_level: bool) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) of every ablate import in ``module``."""
    tree = TREES[module]
    nodes = []
    if module_level:  # the module's body, into if/try blocks, never into functions or classes
        todo = list(tree.body)
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                nodes.append(node)
            elif isinstance(node, (ast.If, ast.Try)):
                todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                         *(s for h in getattr(node, "handlers", []) for s in h.body)]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "ablate"]
        else:
            source = _absolute(module, node)
            if source.split(".")[0] == "ablate":
                out += [(source, alias.name) for alias in node.names]
    return out


def _reexports(package: str) -> dict[str, str]:
    """Name -> the module a package ``__init__`` takes it from (imports and a ``_LAZY`` table)."""
    found = {name: source for source, name in _imports(package, module_level=True) if name and source != package}
    for node in TREES[package].body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_LAZY" for t in node.targets):
            found |= {k.value: v.value for k, v in zip(node.value.keys, node.value.values)}
    return found


def _target(source: str, name: str | None) -> str:
    """The module an import of ``name`` from ``source`` runs, looking through re-exporting packages."""
    if name is not None and f"{source}.{name}" in MODULES:
        return f"{source}.{name}"
    seen = set()
    while name is not None and MODULES.get(source, Path()).name == "__init__.py" and source not in seen:
        seen.add(source)
        nxt = _reexports(source).get(name)
        if nxt is None or nxt not in MODULES:
            break
        source = nxt
    return source


def import_graph() -> dict[str, set[str]]:
    return {module: {_target(s, n) for s, n in _imports(module, module_level=False)} - {module} for module in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_underscore_name():
    found = [f"{module} imports {name} from {source}" for module in MODULES
             for source, name in _imports(module, module_level=False)
             if name and name.startswith("_") and not name.startswith("__")]
    assert not found, "; ".join(found)


def test_the_checks_see_a_circle_and_a_reexport():
    """The checks can fail: a made-up circle is found and named; a re-exported name resolves to its module."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert _target("ablate.data", "DeviceData") == "ablate.data.device"  # the package's _LAZY table
    assert _target("ablate.data", "dataset_names") == "ablate.data.catalog"  # the package's own import
    assert "ablate.trainer" in import_graph()["ablate.search.trainable"]
