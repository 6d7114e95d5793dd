"""Shared pytest set-up. Topic fixtures live in tests/support_*.py (on sys.path via pytest's pythonpath)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_HOSTS = REPO / "tests" / "fixtures" / "hosts"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(params=["c", "ctypes"])
def host_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: with the probe rounds' C helper (probes/host_c.py: openat2 and the steady
    round's batch replay in C) and with the ctypes/Python path a box without a compiler takes; given to
    every test of the modules named in _BOTH_PATHS (pytest_generate_tests below)."""
    from nodecompat.probes import host_c

    if request.param == "c" and host_c._built is None:
        pytest.skip("the C helper is not built here (tests/test_probe_c_helper.py says whether it must be)")
    monkeypatch.setattr(host_c, "USE_C", request.param == "c")
    return str(request.param)


_BOTH_PATHS = ("test_hostroot", "test_probe_")  # modules whose every test runs with host_reads' two paths
_ONE_PATH = ("test_probe_hotplug", "test_probe_c_helper")  # udev events; the C helper itself (asks when it must)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every hostroot/probe/memo/runner test runs with the C helper and with the ctypes/Python path
    (host_reads, given its two parameters here: a fixture no test names is not parametrized by pytest)."""
    name = metafunc.module.__name__.rpartition(".")[2]
    if name.startswith(_BOTH_PATHS) and name not in _ONE_PATH and "host_reads" not in metafunc.fixturenames:
        metafunc.fixturenames.append("host_reads")
        metafunc.parametrize("host_reads", ["c", "ctypes"], indirect=True)
