"""Shared pytest set-up. Topic fixtures live in tests/support_*.py (on sys.path via pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_HOSTS = REPO / "tests" / "fixtures" / "hosts"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
