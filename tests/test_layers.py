"""The architecture as drawn: search/ and cluster/ above trainables/, no import circles.

Walks every module of the three packages with ``ast`` (imports inside functions
included) and fails on an upward import or a circle between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trainables", "cluster", "search")
# Which packages each may import (besides itself). One direction only between any two.
ALLOWED = {"trainables": set(), "cluster": {"trainables"}, "search": {"cluster", "trainables"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Project modules a file imports (``from a import b`` counts a.b when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = {t for t in project_imports(path) if t in files} | {
            t.rsplit(".", 1)[0] for t in project_imports(path) if t not in files and t.rsplit(".", 1)[0] in files
        }
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
    # a package's __init__ importing its own submodules is how a registry discovers them
    edges = {s: {t for t in ts if not (s + ".").startswith(t + ".")} for s, ts in edges.items()}
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
