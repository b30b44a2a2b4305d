"""The import graph stays layered: no two capabilities of ``worker`` import each other, directly or round about.

Read from the source (module-level imports, the ones that run at import time), collapsed to capabilities
(``worker.delivery``, ``worker.outbox``, ``worker.care_pause``, a flat module such as ``worker.consent``...). A cycle
between capabilities is how a floor module ends up importing the composition root; this test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "integrations", "jobs")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _capability(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _imports(path: Path, known: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in candidates if name in known}
    return found


def capability_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        for target in _imports(path, set(paths)):
            source, dest = _capability(module), _capability(target)
            if source != dest:
                graph.setdefault(source, set()).add(dest)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_capability_imports_round_in_a_circle() -> None:
    assert cycles(capability_graph()) == []


@pytest.mark.parametrize(
    "floor", ["worker.settings", "worker.db", "worker.clock", "worker.errors", "worker.categories"]
)
def test_the_floor_imports_no_capability(floor: str) -> None:
    allowed = {"worker.settings", "worker.db", "worker.clock", "worker.errors", "worker.categories", "worker.logs"}
    assert capability_graph().get(floor, set()) <= allowed


def test_the_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
