"""Which pipeline/lrt source files each DVC stage imports, from the code (AST, no imports run).

    python -m tests.dvc_graph            # per stage: modules imported but not in its deps

Reachability is per function: `from pipeline.x import f` brings in x's top-level imports, f and
what f refers to (other functions of x, its deferred imports), not every function of x; a module
bound to a name (`from pipeline import x`, `import pipeline.x as x`) brings in its top level and
the `x.attr` used where the name is visible. A module passed around as a value (`tracker=tracking`)
is not followed further; every stage lists pipeline/tracking.py anyway. A stage starts at its
`stages/<name>.py`, with `pipeline.steps.stage_main` narrowed to the one step function it
dispatches to (its if/elif names every step).
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "lrt")
# stage -> (module, function) that `python -m stages.<stage>` runs
STAGE_ENTRY = {
    "download": ("pipeline.steps", "download"),
    "tokenize": ("pipeline.steps", "tokenize"),
    "train": ("pipeline.steps", "train"),
    "eval": ("pipeline.steps", "evaluate"),
    "report": ("pipeline.steps", "report"),
    "eval_bundle": ("pipeline.steps", "_eval_bundle_stage"),
}
DISPATCH = ("pipeline.steps", "stage_main")  # the shared entry; only its own imports count
# Package inits whose own imports are not followed: lrt/__init__ re-exports the model for users
# (`from lrt import LRT`), so `from lrt.config import LRTConfig` (settings validation) would
# otherwise make every stage, download included, depend on the whole model. A stage depends on
# the lrt modules it (or the pipeline code it runs) imports by name.
OPAQUE_INITS = ("lrt",)


def module_file(name: str) -> Path | None:
    """The source file of module `name` in this repository, or None (third party, extension)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


class _Module:
    """One parsed module: its top-level imports/names and each top-level def's."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self.defs: dict[str, ast.AST] = {}
        self.aliases: dict[str, str] = {}  # top-level name -> repository module bound to it
        top: list[ast.stmt] = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.defs[node.name] = node
                # decorators and base classes run at import time
                top.extend(ast.Expr(d) for d in node.decorator_list)
                if isinstance(node, ast.ClassDef):
                    top.extend(ast.Expr(b) for b in node.bases)
            else:
                top.append(node)
        self.aliases = _module_aliases(self, top)
        self.top = _scan(self, top)
        self.by_def = {k: _scan(self, [v]) for k, v in self.defs.items()}

    def resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = self.name.split(".")
        base = parts if self.is_package else parts[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))


def _walk(node: ast.AST):
    """`ast.walk` without the bodies of `if TYPE_CHECKING:` (never run)."""
    todo = [node]
    while todo:
        item = todo.pop()
        yield item
        if isinstance(item, ast.If) and "TYPE_CHECKING" in ast.unparse(item.test):
            todo.extend(item.orelse)
            continue
        todo.extend(ast.iter_child_nodes(item))


def _module_aliases(mod: _Module, body: list[ast.stmt]) -> dict[str, str]:
    """Names that `body`'s imports bind to a repository module."""
    out: dict[str, str] = {}
    for stmt in body:
        for node in _walk(stmt):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and module_file(alias.name) is not None:
                        out[alias.asname] = alias.name
                    elif module_file(alias.name.split(".")[0]) is not None:
                        out[alias.name.split(".")[0]] = alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = mod.resolve(node)
                for alias in node.names:
                    if module_file(f"{base}.{alias.name}") is not None:
                        out[alias.asname or alias.name] = f"{base}.{alias.name}"
    return out


def _scan(mod: _Module, body: list[ast.stmt]) -> tuple[set[tuple[str, str | None]], set[str]]:
    """(imported (module, symbol) targets, names referred to) in `body`."""
    targets: set[tuple[str, str | None]] = set()
    names: set[str] = set()
    aliases = {**getattr(mod, "aliases", {}), **_module_aliases(mod, body)}
    for stmt in body:
        for node in _walk(stmt):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    for i in range(1, len(parts) + 1):  # parents' __init__ run too
                        targets.add((".".join(parts[:i]), "<init>"))
            elif isinstance(node, ast.ImportFrom):
                base = mod.resolve(node)
                parts = base.split(".")
                for i in range(1, len(parts) + 1):
                    targets.add((".".join(parts[:i]), "<init>"))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if module_file(sub) is not None:
                        targets.add((sub, "<init>"))  # its attributes: below, where used
                    else:
                        targets.add((base, alias.name))
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                target = aliases[node.value.id]
                sub = f"{target}.{node.attr}"
                targets.add((sub, "<init>") if module_file(sub) else (target, node.attr))
            if isinstance(node, ast.Name):
                names.add(node.id)
    return targets, names


@functools.cache
def _parsed(name: str) -> _Module | None:
    path = module_file(name)
    return None if path is None else _Module(name, path)


def reachable(roots: list[tuple[str, str | None]]) -> set[str]:
    """Repository modules reached from `roots` ((module, symbol); symbol None: all of it;
    "<init>": its top level only)."""
    seen: set[tuple[str, str | None]] = set()
    modules: set[str] = set()
    todo = list(roots)
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        name, symbol = item
        mod = _parsed(name)
        if mod is None:
            continue
        modules.add(name)
        if name in OPAQUE_INITS and symbol == "<init>":
            continue
        targets, names = mod.top
        todo.extend(targets)
        wanted = set(mod.defs) if symbol is None else {symbol} | (names & set(mod.defs))
        todo.extend((name, d) for d in wanted if (name, d) not in seen and d != symbol)
        if symbol in mod.defs:
            targets, names = mod.by_def[symbol]
            todo.extend(targets)
            todo.extend((name, d) for d in names & set(mod.defs) if d != symbol)
    return modules


def stage_modules(stage: str) -> set[str]:
    """Repository modules that `python -m stages.<stage>` imports (the stage file excluded)."""
    entry = STAGE_ENTRY[stage]
    mod = _parsed(DISPATCH[0])
    assert mod is not None
    dispatch_imports, _ = mod.by_def[DISPATCH[1]]
    roots = [entry, (entry[0], "<init>")]
    if entry[0] == DISPATCH[0]:
        roots += list(dispatch_imports)
    return reachable(roots)


def module_path(name: str) -> str:
    path = module_file(name)
    assert path is not None
    return path.relative_to(REPO).as_posix()


def stage_deps(stage: str, dvc: dict | None = None) -> list[str]:
    """The `deps:` of `stage` in dvc.yaml (a foreach stage: its `do` block)."""
    dvc = dvc or yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    spec = dvc["stages"][stage]
    return list(spec.get("do", spec).get("deps", []))


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def missing(stage: str) -> list[str]:
    deps = stage_deps(stage)
    return sorted(
        p
        for p in (module_path(m) for m in stage_modules(stage))
        if not covered(p, deps) and p != "pipeline/__init__.py" and p != "lrt/__init__.py"
        # the package inits: lrt/ is a dependency folder; pipeline/__init__ holds __version__
    )


if __name__ == "__main__":  # pragma: no cover
    bad = 0
    for stage in STAGE_ENTRY:
        gaps = missing(stage)
        bad += len(gaps)
        print(f"{stage}: {', '.join(gaps) or 'ok'}")
    sys.exit(1 if bad else 0)
