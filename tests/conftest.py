"""Shared pytest fixtures: where the shared real data lives, and skip helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Real data nobody on this project wrote; it sits beside the checkout and is never copied in.
SHARED_DATA = Path(os.environ.get("LRT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a clear message when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"shared data {path} is absent (set LRT_SHARED_DATA to its folder to run this test)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_path()
