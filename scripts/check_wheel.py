"""Fail unless a built wheel ships the extension and the `lrt`, `pipeline` and `stages` packages.

Usage: python scripts/check_wheel.py target/wheels/lrt_pipeline-*.whl
"""

from __future__ import annotations

import sys
import zipfile

REQUIRED = ("lrt/__init__.py", "pipeline/__init__.py", "stages/", "pipeline/py.typed")


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    for path in paths:
        names = zipfile.ZipFile(path).namelist()
        missing = [r for r in REQUIRED if not any(n.startswith(r) for n in names)]
        if not any(n.startswith("pipeline/_rust") and n.endswith(".so") for n in names):
            missing.append("pipeline/_rust*.so (the extension)")
        if missing:
            print(
                f"{path}: missing {missing}; add them to [tool.maturin] in pyproject.toml",
                file=sys.stderr,
            )
            return 1
        print(f"{path}: ok ({len(names)} files; lrt, pipeline, stages and the extension present)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
