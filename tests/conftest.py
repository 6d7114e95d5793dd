"""Shared pytest set-up. Topic fixtures live in tests/support_*.py (on sys.path via pytest's pythonpath)."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
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


# Tests that share something beyond their own process, tmp_path and ports run one at a time: each holds its
# group's lock (flock, released when the test ends or its process dies) for the whole test, setup and teardown
# included, whichever pytest-xdist worker -- or other checkout's suite on this machine -- runs the rest. Keyed by
# module name, or "module::test" for a single test. Everything else is safe beside anything: servers listen on
# free_port()'s ports (tests/support_daemon.py) or port 0, files live under tmp_path, environment changes stay
# in their process.
_LOCKED = {
    # The kernel's net uevents and the root network namespace's devices, machine-wide: test_probe_hotplug counts
    # the uevents it saw (a veth another test adds meanwhile is one more, and so is another suite's write to lo's
    # uevent file); the daemon's hot-plug test and the namespaces test add veth pairs.
    "test_probe_hotplug": "host-net",
    "test_daemon::test_daemon_reprobes_when_a_network_device_is_hot_plugged": "host-net",
    "test_fleet_netns": "host-net",
    # This checkout's tree: the README check (tools/readme_check.py) fails when a file appears in the checkout
    # while its recipes run, which test_readme's checker tests do on purpose (left-behind.readme-check-test).
    "test_readme": "checkout",
}


def _lock_path(group: str) -> Path:
    if group == "checkout":  # one lock a checkout
        return Path(tempfile.gettempdir()) / f"nodecompat-tests-{hashlib.sha256(bytes(REPO)).hexdigest()[:12]}.lock"
    return Path(tempfile.gettempdir()) / f"nodecompat-tests-{group}.lock"


@pytest.fixture(autouse=True)
def _exclusive(request: pytest.FixtureRequest) -> Iterator[None]:
    """Holds the lock of the test's group (_LOCKED) while the test runs; nothing for the other tests."""
    module = request.node.module.__name__.rpartition(".")[2] if request.node.module else ""
    name = getattr(request.node, "originalname", request.node.name)
    group = _LOCKED.get(f"{module}::{name}") or _LOCKED.get(module)
    if group is None:
        yield
        return
    with _lock_path(group).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # waits for whoever holds it: a test of the same group elsewhere
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
