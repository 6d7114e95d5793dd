"""Directory listings under the host root are bounded in entries and bytes (nodecompat/hostroot.py
MAX_LIST_ENTRIES / MAX_LIST_BYTES): past the bound the listing is an error the probe reports in its status
(its features left out), never a truncated set that would read as "device absent".

NFD lists the same directories unbounded: source/pci/utils.go detectPci (ReadDir of
/sys/bus/pci/devices), source/usb/utils.go, source/local/local.go (ReadDir of features.d); when its
ReadDir fails the source returns the error and publishes nothing, which is what an overflow does here.
Every test runs with the C helper and the ctypes/Python path (tests/conftest.py host_reads).
"""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from nodecompat import hostroot
from nodecompat.hostroot import HostRoot, ListingTooLarge
from nodecompat.probes.local import MAX_FILE_SIZE, MAX_TOTAL_BYTES, LocalProbe
from nodecompat.probes.pci import PciProbe
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.runner import ProbeRunner

BOUND = 20
PCI = "sys/bus/pci/devices"
FEATURES_D = hostroot.DEFAULT_FEATURES_D.lstrip("/")


def _device(d: Path) -> None:
    d.mkdir(parents=True)
    for name, value in (("class", "0x020000"), ("vendor", "0x8086"), ("device", "0x1521"),
                        ("subsystem_vendor", "0x8086"), ("subsystem_device", "0x0001")):  # fmt: skip
        (d / name).write_text(value + "\n")


def _tree(root: Path, n: int) -> None:
    """n PCI functions and n feature files under `root`."""
    for i in range(n):
        _device(root / PCI / f"0000:00:{i // 8:02x}.{i % 8}")
    fd = root / FEATURES_D
    fd.mkdir(parents=True)
    for i in range(n):
        (fd / f"f{i:03d}").write_text(f"k{i}=v{i}\n")


def _status(r: ProbeRound, name: str) -> tuple[bool, str | None]:
    st = next(s for s in r.statuses if s.name == name)
    return st.ok, st.error or None


def _published(r: ProbeRound) -> set[str]:
    f = r.features
    return {*f.instances, *f.attributes, *f.flags}


def test_a_listing_past_the_bound_fails_the_probe_every_round_and_memo_replay_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pci and local (the features.d walk) over a tree of BOUND + 1 entries: both fail with the listing's
    message and publish nothing, in the first round and the steady ones. At the bound they publish every
    device and file (reused by memo replay next round); one entry more and the replay sees the overflow:
    the probes fail again rather than publish a stale or truncated set."""
    monkeypatch.setattr(hostroot, "MAX_LIST_ENTRIES", BOUND)
    _tree(tmp_path, BOUND + 1)
    runner = ProbeRunner([PciProbe(), LocalProbe()], HostRoot(tmp_path))
    for _ in range(3):
        r = runner.run()
        assert _status(r, "pci") == (False, f"ListingTooLarge: listing of /sys/bus/pci/devices exceeds {BOUND} "
                                            "entries: not listed (the probe publishes nothing from it)")
        ok, error = _status(r, "local")
        assert not ok and error is not None
        assert f"listing of /{FEATURES_D} exceeds {BOUND} entries" in error
        assert _published(r) == set(), "nothing published from a listing past the bound"

    os.unlink(tmp_path / FEATURES_D / f"f{BOUND:03d}")
    for name in os.listdir(last := tmp_path / PCI / f"0000:00:{BOUND // 8:02x}.{BOUND % 8}"):
        os.unlink(last / name)
    os.rmdir(last)
    r1, r2 = runner.run(), runner.run()
    for r in (r1, r2):
        assert _status(r, "pci") == (True, None) and _status(r, "local") == (True, None)
        assert len(r.features.instances["pci.device"].elements) == BOUND
        assert len(r.features.attributes["local.feature"].elements) == BOUND
    assert all(s.reused for s in r2.statuses if s.name in ("pci", "local")), "steady round: memo replay"

    _tree_more = tmp_path / FEATURES_D / "zz-one-more"
    _tree_more.write_text("late=1\n")
    _device(last)
    r3 = runner.run()
    assert not _status(r3, "pci")[0] and not _status(r3, "local")[0]
    assert _published(r3) == set()


def test_the_bytes_bound_applies_too_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few entries with long names: past MAX_LIST_BYTES bytes of names the listing fails the same way,
    on HostRoot, a round's host (C or Python) and again from the round's memo."""
    monkeypatch.setattr(hostroot, "MAX_LIST_BYTES", 1000)
    d = tmp_path / "sys" / "d"
    d.mkdir(parents=True)
    for i in range(5):
        (d / (f"{i}" + "x" * 199)).write_bytes(b"")
    assert len(HostRoot(tmp_path).listdir("/sys/d")) == 5  # 1000 bytes: at the bound
    (d / "one-more").write_bytes(b"")
    rh = RoundHost.over(HostRoot(tmp_path))
    for host in (HostRoot(tmp_path), rh, rh):
        with pytest.raises(ListingTooLarge, match="listing of /sys/d exceeds 1000 bytes of names"):
            host.listdir("/sys/d")
        with pytest.raises(ListingTooLarge):
            list(host.iterdir("/sys/d"))
    assert rh.listdir("/sys/missing") == [] and RoundHost.over(HostRoot(tmp_path)).listdir("/sys") == ["d"]


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host root whose /sys/d holds twice MAX_LIST_ENTRIES (the real bound) empty files (~2 s)."""
    root = tmp_path_factory.mktemp("big")
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
    dfd = os.open(d, os.O_DIRECTORY)
    try:
        for i in range(2 * hostroot.MAX_LIST_ENTRIES):
            os.close(os.open(f"{i:07d}", flags, dir_fd=dfd))
    finally:
        os.close(dfd)
    return root


def test_the_real_bound_keeps_a_huge_directorys_listing_bounded_in_memory(big_dir: Path) -> None:
    """With the real MAX_LIST_ENTRIES, a directory of twice as many entries is refused, and the Python
    objects made while refusing it peak at well under what listing it whole costs (tracemalloc, measured
    in the same run: the unbounded os.listdir of the same directory). The C helper stops reading at the
    bound before making any Python object (its own buffer is at most MAX_LIST_ENTRIES names)."""
    text = "/sys/d"
    tracemalloc.start()
    try:
        names = sorted(os.listdir(big_dir / "sys" / "d"))
        _, whole = tracemalloc.get_traced_memory()
        del names
        tracemalloc.reset_peak()
        for host in (HostRoot(big_dir), RoundHost.over(HostRoot(big_dir))):
            with pytest.raises(ListingTooLarge, match=f"exceeds {hostroot.MAX_LIST_ENTRIES} entries"):
                host.listdir(text)
        _, bounded = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bounded < 0.7 * whole, (bounded, whole)


def test_features_d_files_together_are_bounded_too(tmp_path: Path) -> None:
    """Within the listing bound features.d could still hold 65,536 files of 64 KiB (4 GiB read, ~46x that in the
    daemon's memory: 6.3 MB of files cost ~290 MB RSS and a 14 MB GetFeatures answer). 16 files of 64 KiB (the
    bound, 1 MiB) publish; one byte more and the local probe fails and publishes nothing, the other probes still
    publish, every round (review9)."""
    _tree(tmp_path, 1)
    fd = tmp_path / FEATURES_D
    os.unlink(fd / "f000")
    for i in range(MAX_TOTAL_BYTES // MAX_FILE_SIZE):
        (fd / f"big{i:02d}").write_text("".join(f"k{i:02d}{j:04d}={'v' * 55}\n" for j in range(MAX_FILE_SIZE // 64)))
    assert sum(p.stat().st_size for p in fd.iterdir()) == MAX_TOTAL_BYTES
    runner = ProbeRunner([PciProbe(), LocalProbe()], HostRoot(tmp_path))
    r = runner.run()
    assert _status(r, "local") == (True, None)
    assert len(r.features.attributes["local.feature"].elements) == MAX_TOTAL_BYTES // 64
    (fd / "zz").write_text("x")
    for _ in range(2):
        r = runner.run()
        ok, error = _status(r, "local")
        assert not ok and error is not None
        assert f"exceed {MAX_TOTAL_BYTES} bytes together (at /{FEATURES_D}/zz)" in error
        assert "local.feature" not in r.features.attributes and "local.label" not in r.features.attributes
        assert _status(r, "pci") == (True, None) and len(r.features.instances["pci.device"].elements) == 1
