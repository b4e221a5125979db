"""pipeline/ reads top-down by what each part serves (docs/LAYOUT.md): arrows one way, no import
cycles, no module over 500 lines, and every name that moved in the #15 re-layout importable from
the new home docs/LAYOUT.md gives for it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from tests.import_graph import assert_acyclic

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipeline"
LAYOUT_DOC = REPO / "docs" / "LAYOUT.md"
MAX_LINES = 500

# Layers, bottom up: a module may import its own layer and the ones below, never one above.
# Siblings of a layer may import each other (evaluation reads train's checkpoints, train calls
# evaluation's BPB), which the no-cycle test keeps honest at the module level.
LAYERS = [
    ("config", ["pipeline.config"]),
    ("services", ["pipeline.atomic", "pipeline.tracking", "pipeline.invocation"]),
    ("data", ["pipeline.data"]),
    ("work", ["pipeline.train", "pipeline.evaluation", "pipeline.report", "pipeline.mlflow_model"]),
    (
        "orchestration",
        ["pipeline.steps", "pipeline.sweep", "pipeline.study", "pipeline.benchmarks"],
    ),
    ("cli", ["pipeline.cli"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PIPELINE.rglob("*.py"))}


def layer_of(name: str) -> int:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{name}: not in any layer; add it to LAYERS (tests/test_layout.py)")


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The pipeline modules `path` imports anywhere (deferred and TYPE_CHECKING imports too)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for t in targets:
            while t and t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name and t != "pipeline":
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_is_placed_and_imports():
    for name in modules():
        if name == "pipeline" or name.endswith("__main__"):
            continue
        layer_of(name)
        importlib.import_module(name)


def test_no_import_cycle():
    assert_acyclic(graph())


def test_arrows_point_down():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items()
        if m != "pipeline"
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_lrt_does_not_import_pipeline():
    offenders = []
    for path in sorted((REPO / "lrt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "pipeline"]
    assert not offenders, offenders


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(REPO)): n
        for p in modules().values()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split by responsibility): {long}"


_ROW = re.compile(r"^\| `(?P<old>[\w.]+)` \| (?P<names>[^|]+) \| `(?P<new>[\w.]+)` \|$")


def moved_names() -> list[tuple[str, str, str]]:
    """(old module, name, new module) for every row of docs/LAYOUT.md's table of moved names."""
    rows = []
    for line in LAYOUT_DOC.read_text(encoding="utf-8").splitlines():
        if m := _ROW.match(line.strip()):
            for item in m["names"].split(","):  # "`old_name` as `new_name`" when renamed
                rows.append((m["old"], re.findall(r"`(\w+)`", item)[-1], m["new"]))
    return rows


def test_every_moved_name_imports_from_the_home_the_table_gives():
    rows = moved_names()
    assert len(rows) > 100, f"{LAYOUT_DOC}: the table of moved names went missing"
    wrong = []
    for old, name, new in rows:
        try:
            getattr(importlib.import_module(new), name)
        except (ImportError, AttributeError) as exc:
            wrong.append(f"{old}.{name} -> {new}: {exc}")
    assert not wrong, "docs/LAYOUT.md names homes that do not hold the name:\n" + "\n".join(wrong)


@pytest.mark.parametrize("old", ["pipeline.settings", "pipeline.training", "pipeline.report_data"])
def test_old_flat_modules_are_gone(old):
    """The move is one step: no second home left behind at the old flat path."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)
