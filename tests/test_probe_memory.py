"""memory probe: fixture trees (exact), this machine, unreadable files, parsers."""

from __future__ import annotations

import os

from support_hosts import REAL, attrs, copy_fixture, fixture_host, instances, make_unreadable, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.memory import MemoryProbe, parse_meminfo, swap_enabled


def test_h100_exact():
    wire, out = run(MemoryProbe(), fixture_host("h100-server"))
    assert wire["attributes"] == {
        "memory.numa": {"elements": {"is_numa": "true", "node_count": "2"}},
        "memory.swap": {"elements": {"enabled": "false"}},
        "memory.size": {
            "elements": {
                "available_bytes": str(1990341764 * 1024),
                "swap_total_bytes": "0",
                "total_bytes": str(2113628360 * 1024),
            }
        },
    }
    assert instances(wire, "memory.nv") == []
    assert out.notes == []


def test_mi300_exact():
    wire, _ = run(MemoryProbe(), fixture_host("amd-mi300"))
    assert attrs(wire, "memory.numa") == {"is_numa": "true", "node_count": "2"}
    assert attrs(wire, "memory.swap") == {"enabled": "true"}
    assert attrs(wire, "memory.size") == {
        "total_bytes": str(1584842752 * 1024),
        "available_bytes": str(1501234567 * 1024),
        "swap_total_bytes": str(4194300 * 1024),
    }


def test_plain_vm_exact():
    wire, _ = run(MemoryProbe(), fixture_host("plain-vm"))
    assert attrs(wire, "memory.numa") == {"is_numa": "false", "node_count": "1"}
    assert attrs(wire, "memory.swap") == {"enabled": "false"}
    assert attrs(wire, "memory.size") == {
        "total_bytes": str(24117248 * 1024),
        "available_bytes": str(23000000 * 1024),
        "swap_total_bytes": "0",
    }


def test_real_host():
    wire, _ = run(MemoryProbe(), REAL)
    nodes = os.listdir("/sys/bus/node/devices")
    assert attrs(wire, "memory.numa") == {
        "is_numa": str(len(nodes) > 1).lower(),
        "node_count": str(len(nodes)),
    }
    with open("/proc/swaps") as f:
        swap_lines = [ln for ln in f.read().splitlines() if ln.strip()]
    assert attrs(wire, "memory.swap") == {"enabled": str(len(swap_lines) > 1).lower()}
    with open("/proc/meminfo") as f:
        mem_total_kb = next(int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:"))
    size = attrs(wire, "memory.size") or {}
    assert size["total_bytes"] == str(mem_total_kb * 1024)  # psutil reads the same MemTotal
    assert 0 < int(size["available_bytes"]) <= int(size["total_bytes"])


def test_unreadable_files(tmp_path):
    host = copy_fixture("amd-mi300", tmp_path)
    make_unreadable(host, "/proc/swaps")
    make_unreadable(host, "/proc/meminfo")
    wire, out = run(MemoryProbe(), host)
    assert attrs(wire, "memory.swap") is None and attrs(wire, "memory.size") is None
    assert attrs(wire, "memory.numa") == {"is_numa": "true", "node_count": "2"}
    assert out.notes == [
        "/proc/swaps unreadable: memory.swap left out",
        "/proc/meminfo unreadable: memory.size left out",
    ]


def test_numa_as_nfd_and_nvdimm(tmp_path):
    host = copy_fixture("plain-vm", tmp_path)
    os.unlink(host.path("/sys/bus/node/devices/node0"))
    nd = host.path("/sys/bus/nd/devices")
    (nd / "region0").mkdir(parents=True)
    (nd / "region0/devtype").write_text("nd_region\n")
    (nd / "dax0.0").mkdir()
    (nd / "dax0.0/devtype").write_text("nd_dax\n")
    (nd / "dax0.0/mode").write_text("devdax\n")
    wire, _ = run(MemoryProbe(), host)
    # NFD memory.go detectNuma(): ReadDir of an empty /sys/bus/node/devices -> 0 nodes (no other source)
    assert attrs(wire, "memory.numa") == {"is_numa": "false", "node_count": "0"}
    assert instances(wire, "memory.nv") == [
        {"name": "dax0.0", "devtype": "nd_dax", "mode": "devdax"},
        {"name": "region0", "devtype": "nd_region"},
    ]


def test_empty_root(tmp_path):
    wire, out = run(MemoryProbe(), HostRoot(tmp_path))
    assert wire["attributes"] == {}
    assert len(out.notes) == 3


def test_parsers():
    assert parse_meminfo("MemTotal:  100 kB\nHugePages_Total:   4\nbad line\nX: notanumber kB\n") == {
        "MemTotal": 102400,
        "HugePages_Total": 4,
    }
    assert swap_enabled("Filename Type Size Used Priority\n") is False
    assert swap_enabled("Filename Type\n/swapfile file 100 0 -2\n\n") is True
    assert swap_enabled("") is False


def test_real_host_sizes_are_psutils():
    """On the real root memory.size comes from the round's read of /proc/meminfo: the same MemTotal and
    SwapTotal psutil reports (psutil _pslinux.py virtual_memory/swap_memory)."""
    import psutil

    wire, _ = run(MemoryProbe(), REAL)
    size = attrs(wire, "memory.size") or {}
    assert size["total_bytes"] == str(psutil.virtual_memory().total)
    assert size["swap_total_bytes"] == str(psutil.swap_memory().total)
