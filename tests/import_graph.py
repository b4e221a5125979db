"""Shared by the import-order tests (tests/test_lrt_imports.py, tests/test_layout.py)."""

from __future__ import annotations

from collections.abc import Mapping, Set


def assert_acyclic(graph: Mapping[str, Set[str]]) -> None:
    """Fail with the first import cycle of `graph` (module -> modules it imports), as a path."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            visit(dep, [*path, m])
        state[m] = 2

    for m in graph:
        visit(m, [])
