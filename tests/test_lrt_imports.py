"""lrt/ reads bottom-up: no module imports one above it (no cycles, deferred imports included)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import lrt
from tests.import_graph import assert_acyclic

LRT_DIR = Path(lrt.__file__).parent
# The documented reading order (lrt/__init__.py); a module may import only modules before it.
ORDER = [
    "config",
    "attention",
    "recurrence",
    "backbone",
    "passes",
    "static_decode",
    "decode",
    "strategies",
    "model",
    "interop",
    # the training side (owned apart): schedules, optimizer, FLOP/param accounting
    "schedule",
    "optim",
    "accounting",
]


def lrt_imports(path: Path) -> set[str]:
    """Every lrt module `path` imports, anywhere in the file (functions and TYPE_CHECKING
    blocks included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lrt."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "lrt":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lrt."))
    return out


def graph() -> dict[str, set[str]]:
    mods = sorted(p.stem for p in LRT_DIR.glob("*.py") if p.stem != "__init__")
    return {m: lrt_imports(LRT_DIR / f"{m}.py") - {m} for m in mods}


def test_every_module_imports():
    for m in graph():
        importlib.import_module(f"lrt.{m}")


def test_no_import_cycle():
    assert_acyclic(graph())


def test_imports_follow_the_reading_order():
    g = graph()
    unknown = sorted(set(g) - set(ORDER))
    assert not unknown, f"place {unknown} in ORDER (tests/test_lrt_imports.py) and lrt/__init__"
    rank = {m: i for i, m in enumerate(ORDER)}
    upward = [(m, d) for m, deps in g.items() for d in deps if rank[d] > rank[m]]
    assert not upward, f"modules importing a module above them: {upward}"


def test_cycle_detector_can_fail(tmp_path):
    (tmp_path / "a.py").write_text("from lrt.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from lrt.a import y\n")
    assert lrt_imports(tmp_path / "a.py") == {"b"}
    assert lrt_imports(tmp_path / "b.py") == {"a"}  # a deferred import counts
