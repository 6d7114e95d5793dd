"""HotplugWatcher against real kernel uevents (we run as root): a synthetic uevent and a real veth pair."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid

import pytest

from nodecompat.probes.hotplug import HotplugWatcher, _summarise


class Collector:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.event = threading.Event()

    def __call__(self, description: str) -> None:
        self.calls.append(description)
        self.event.set()


def _can_watch() -> bool:
    w = HotplugWatcher(lambda _d: None)
    ok = w.start()
    w.stop()
    return ok


needs_netlink = pytest.mark.skipif(
    os.geteuid() != 0 or not _can_watch(), reason="needs root and a uevent netlink socket"
)


@needs_netlink
def test_synthetic_uevent_is_reported_once_debounced():
    got = Collector()
    w = HotplugWatcher(got, subsystems=("net",), debounce=0.2)
    assert w.start() and w.running
    try:
        for _ in range(3):  # a burst: one debounced call
            with open("/sys/class/net/lo/uevent", "w") as f:
                f.write("change")
        assert got.event.wait(5)
        w.stop()
        assert got.calls == ["change net lo"]
    finally:
        w.stop()
    assert not w.running


@needs_netlink
@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_real_veth_add_and_remove():
    a, b = f"nc{uuid.uuid4().hex[:6]}", f"nc{uuid.uuid4().hex[:6]}"
    got = Collector()
    w = HotplugWatcher(got, subsystems=("net",), debounce=0.3)
    assert w.start()
    try:
        r = subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot create veth: {r.stderr.decode().strip()}")
        assert got.event.wait(5)
        assert f"add net {a}" in got.calls[0] and f"add net {b}" in got.calls[0]
        got.event.clear()
        subprocess.run(["ip", "link", "del", a], check=True)
        assert got.event.wait(5)
        assert "remove net" in got.calls[-1]
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        w.stop()


@needs_netlink
def test_other_subsystems_are_filtered_out():
    got = Collector()
    w = HotplugWatcher(got, subsystems=("drm",), debounce=0.1)
    assert w.start()
    try:
        with open("/sys/class/net/lo/uevent", "w") as f:
            f.write("change")
        assert not got.event.wait(0.6)
    finally:
        w.stop()


@needs_netlink
def test_callback_exception_does_not_kill_the_watcher():
    calls: list[str] = []

    def boom(description: str) -> None:
        calls.append(description)
        raise RuntimeError("callback bug")

    w = HotplugWatcher(boom, subsystems=("net",), debounce=0.1)
    assert w.start()
    try:
        for _ in range(2):
            with open("/sys/class/net/lo/uevent", "w") as f:
                f.write("change")
            deadline = threading.Event()
            deadline.wait(0.5)
        # only lo's own uevents count: interfaces other processes add or remove meanwhile (network namespaces, veth
        # pairs of other tests on a shared machine) are net uevents too and would add callbacks of their own
        ours = [c for c in calls if "change net lo" in c]
        assert len(ours) == 2 and w.running, calls
    finally:
        w.stop()


def test_start_without_netlink_returns_false(monkeypatch):
    import pyudev

    def refuse(*_a, **_k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pyudev.Monitor, "from_netlink", refuse)
    w = HotplugWatcher(lambda _d: None)
    assert w.start() is False
    assert not w.running
    assert (
        w.why_unavailable
        == "uevent netlink monitor unavailable: PermissionError: [Errno 1] Operation not permitted"
    )
    w.stop()  # harmless


def test_summarise():
    assert _summarise(["add net a", "add net a", "remove net b"]) == "add net a, remove net b"
    assert _summarise([f"add pci {i}" for i in range(7)]) == (
        "add pci 0, add pci 1, add pci 2, add pci 3, add pci 4 (+2 more)"
    )


@needs_netlink
def test_a_steady_trickle_of_uevents_cannot_postpone_the_reprobe_for_ever():
    """Events every 0.1 s with a 0.3 s debounce would never go quiet; max_delay bounds the wait."""
    got = Collector()
    w = HotplugWatcher(got, subsystems=("net",), debounce=0.3, max_delay=0.8)
    assert w.start()
    try:
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                with open("/sys/class/net/lo/uevent", "w") as f:
                    f.write("change")
                stop.wait(0.1)

        t = threading.Thread(target=trickle)
        t.start()
        try:
            fired = got.event.wait(10)  # the trickle never pauses for 0.3 s, yet on_change comes
        finally:
            stop.set()
            t.join()
    finally:
        w.stop()
    assert fired and got.calls[0] == "change net lo"
