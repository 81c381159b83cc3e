"""The architecture as drawn: search/ and cluster/ above trainables/, no import circles.

Walks every module of the three packages with ``ast`` (imports inside functions,
relative imports, ``importlib.import_module`` with a literal name, edges to an ancestor
package, and a registry's discovery of its children included) and fails on an upward
import or a circle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainables", "cluster", "search")
# Which packages each may import (besides itself). One direction only between any two.
ALLOWED = {"trainables": set(), "cluster": {"trainables"}, "search": {"cluster", "trainables"}}


# A registry package whose __init__ imports every module beside it (found with pkgutil,
# so no import statement names them): the walk adds those edges, so that a child that
# imports back into its registry shows as the circle it is.
REGISTRIES = {"trainables.backbones"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    """The package a module's relative imports start from."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(relative: str, level: int, path: Path) -> str:
    base = _package_of(path).split(".")
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, relative] if relative else base)


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _import_module_target(node: ast.Call, path: Path) -> str | None:
    """The module an ``importlib.import_module("literal"[, __name__ or __package__])``
    call imports; None for a call of anything else or a name computed at run time."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called != "import_module" or not node.args or (name := _literal(node.args[0])) is None:
        return None
    if not name.startswith("."):
        return name
    level = len(name) - len(name.lstrip("."))
    return _resolve(name.lstrip("."), level, path)


def project_imports(path: Path) -> set[str]:
    """Project modules a file imports: ``import``, ``from`` (absolute or relative; ``from a
    import b`` counts a.b when it is a module) and ``importlib.import_module`` with a
    literal name, at any depth (imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module or "", node.level, path) if node.level else node.module
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Call) and (target := _import_module_target(node, path)):
            names = [target]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        imported = project_imports(path)
        targets = {t for t in imported if t in files} | {
            t.rsplit(".", 1)[0] for t in imported if t not in files and t.rsplit(".", 1)[0] in files
        }
        if name in REGISTRIES:
            targets |= {m for m in files if m.rpartition(".")[0] == name}
        edges[name] = {t for t in targets if t != name}
    return edges


def test_no_upward_import():
    upward = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in targets
        if target.split(".")[0] != source.split(".")[0]
        and target.split(".")[0] not in ALLOWED[source.split(".")[0]]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(circles)


def test_the_walk_sees_real_edges():
    """The test itself: the graph has the edges the code is known to have."""
    edges = graph()
    assert "trainables.storage" in edges["trainables.staged"]
    assert "cluster.errors" in edges["cluster.jobs"]
    assert "trainables.params" in edges["search.space"]
    assert "trainables.backbones.efficientnet_lite" in edges["trainables.backbones"]  # the registry's discovery


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_walk_sees_relative_importlib_and_ancestor_edges(tmp_path, monkeypatch):
    """Each kind of import the walk claims to see, in a package written here."""
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    write_package(tmp_path, {
        "trainables/__init__.py": "",
        "trainables/a.py": "from .b import thing\n",
        "trainables/b.py": "def f():\n    import importlib\n    return importlib.import_module('trainables.c')\n",
        "trainables/c.py": "from importlib import import_module\nimport_module('.pkg.d', __package__)\n",
        "trainables/pkg/__init__.py": "",
        "trainables/pkg/d.py": "from trainables import pkg\nfrom .. import a\n",
    })
    edges = graph()
    assert edges["trainables.a"] == {"trainables.b"}  # relative
    assert edges["trainables.b"] == {"trainables.c"}  # importlib, inside a function
    assert edges["trainables.c"] == {"trainables.pkg.d"}  # relative importlib
    assert edges["trainables.pkg.d"] == {"trainables", "trainables.pkg", "trainables.a"}  # ancestors
    try:
        test_no_import_circle()
    except AssertionError as circle:
        assert "trainables.a -> trainables.b -> trainables.c -> trainables.pkg.d -> trainables.a" in str(circle)
    else:
        raise AssertionError("the circle a -> b -> c -> pkg.d -> a was not found")
