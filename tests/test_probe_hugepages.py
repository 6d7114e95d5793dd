"""hugepages probe: fixture trees (exact), this machine, unreadable pools, quantity names."""

from __future__ import annotations

import glob
import os

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, instances, make_unreadable, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.hugepages import HugepagesProbe, quantity_name


def test_h100_exact():
    wire, out = run(HugepagesProbe(), fixture_host("h100-server"))
    assert attrs(wire, "memory.hugepages") == {
        "enabled": "true",
        "hugepages-1Gi": "64",
        "hugepages-1Gi.total": "64",
        "hugepages-1Gi.free": "60",
        "hugepages-2Mi": "0",
        "hugepages-2Mi.total": "0",
        "hugepages-2Mi.free": "0",
    }
    assert instances(wire, "memory.hugepages.node") == [
        {"node": "0", "size": "1Gi", "total": "32", "free": "28"},
        {"node": "0", "size": "2Mi", "total": "0", "free": "0"},
        {"node": "1", "size": "1Gi", "total": "32", "free": "32"},
        {"node": "1", "size": "2Mi", "total": "0", "free": "0"},
    ]
    assert out.notes == []


def test_mi300_exact():
    wire, _ = run(HugepagesProbe(), fixture_host("amd-mi300"))
    assert attrs(wire, "memory.hugepages") == {
        "enabled": "true",
        "hugepages-2Mi": "1024",
        "hugepages-2Mi.total": "1024",
        "hugepages-2Mi.free": "1000",
        "hugepages-1Gi": "0",
        "hugepages-1Gi.total": "0",
        "hugepages-1Gi.free": "0",
    }
    assert instances(wire, "memory.hugepages.node") == [
        {"node": "0", "size": "1Gi", "total": "0", "free": "0"},
        {"node": "0", "size": "2Mi", "total": "512", "free": "500"},
        {"node": "1", "size": "1Gi", "total": "0", "free": "0"},
        {"node": "1", "size": "2Mi", "total": "512", "free": "500"},
    ]


def test_plain_vm_exact():
    wire, _ = run(HugepagesProbe(), fixture_host("plain-vm"))
    assert attrs(wire, "memory.hugepages") == {
        "enabled": "false",
        "hugepages-2Mi": "0",
        "hugepages-2Mi.total": "0",
        "hugepages-2Mi.free": "0",
        "hugepages-1Gi": "0",
        "hugepages-1Gi.total": "0",
        "hugepages-1Gi.free": "0",
    }
    assert instances(wire, "memory.hugepages.node") == [
        {"node": "0", "size": "1Gi", "total": "0", "free": "0"},
        {"node": "0", "size": "2Mi", "total": "0", "free": "0"},
    ]


def test_real_host_matches_sysfs():
    wire, _ = run(HugepagesProbe(), REAL)
    got = attrs(wire, "memory.hugepages") or {}
    any_pages = False
    for d in glob.glob("/sys/kernel/mm/hugepages/hugepages-*kB"):
        kb = int(os.path.basename(d)[len("hugepages-") : -2])
        with open(f"{d}/nr_hugepages") as f:
            nr = f.read().strip()
        any_pages |= int(nr) > 0
        assert got[f"hugepages-{quantity_name(kb)}"] == nr
    assert got["enabled"] == str(any_pages).lower()
    nodes = glob.glob("/sys/devices/system/node/node*/hugepages/hugepages-*kB")
    assert len(instances(wire, "memory.hugepages.node") or []) == len(nodes)


def test_unreadable_pool_skipped(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    make_unreadable(host, "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
    make_unreadable(host, "/sys/devices/system/node/node1/hugepages/hugepages-1048576kB/free_hugepages")
    wire, _ = run(HugepagesProbe(), host)
    # NFD memory.go detectHugePages(): the read error is logged and the pool still published as ""
    assert attrs(wire, "memory.hugepages") == {
        "enabled": "false",
        "hugepages-1Gi": "",
        "hugepages-2Mi": "0",
        "hugepages-2Mi.total": "0",
        "hugepages-2Mi.free": "0",
    }
    assert {"node": "1", "size": "1Gi", "total": "32"} in (instances(wire, "memory.hugepages.node") or [])


def test_no_hugepage_support(tmp_path):
    """NFD memory.go detectHugePages(): ReadDir ErrNotExist -> {"enabled": "false"}, still published."""
    wire, out = run(HugepagesProbe(), HostRoot(tmp_path))
    assert attrs(wire, "memory.hugepages") == {"enabled": "false"}
    assert instances(wire, "memory.hugepages.node") == []
    assert out.notes == [
        "/sys/kernel/mm/hugepages is missing (kernel without hugetlbfs): memory.hugepages enabled=false, as NFD"
    ]


def test_hugepages_path_not_a_directory(tmp_path):
    """Any other ReadDir error: NFD logs it and publishes nothing."""
    (tmp_path / "sys/kernel/mm").mkdir(parents=True)
    (tmp_path / "sys/kernel/mm/hugepages").write_text("")
    wire, out = run(HugepagesProbe(), HostRoot(tmp_path))
    assert attrs(wire, "memory.hugepages") is None
    assert "cannot be listed" in out.notes[0]


@pytest.mark.parametrize(
    ("kb", "name"),
    [
        (2048, "2Mi"),
        (1048576, "1Gi"),
        (64, "64Ki"),
        (32768, "32Mi"),
        (16777216, "16Gi"),
        (1536, "1536Ki"),
        (524288, "512Mi"),
        (0, "0"),
    ],
)
def test_quantity_name(kb, name):
    assert quantity_name(kb) == name
