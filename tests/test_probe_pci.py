"""pci probe: fixture trees (exact), this machine's /sys, unreadable files, helpers."""

from __future__ import annotations

import os

from support_hosts import REAL, copy_fixture, fixture_host, instances, make_unreadable, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.pci import PciProbe
from nodecompat.probes.sysfs_pci import class_code, pci_address_of, strip_hex

H100_GPUS = [
    ("0000:18:00.0", "0"),
    ("0000:2a:00.0", "0"),
    ("0000:3a:00.0", "0"),
    ("0000:5d:00.0", "0"),
    ("0000:9a:00.0", "1"),
    ("0000:ab:00.0", "1"),
    ("0000:ba:00.0", "1"),
    ("0000:db:00.0", "1"),
]


def _h100_gpu(addr: str, numa: str) -> dict[str, str]:
    return {
        "address": addr,
        "class": "0302",
        "vendor": "10de",
        "device": "2330",
        "subsystem_vendor": "10de",
        "subsystem_device": "16c1",
        "driver": "nvidia",
        "iommu_group/type": "identity",
        "numa_node": numa,
    }


def _cx7(addr: str, numa: str) -> dict[str, str]:
    return {
        "address": addr,
        "class": "0200",
        "vendor": "15b3",
        "device": "1021",
        "subsystem_vendor": "15b3",
        "subsystem_device": "0041",
        "driver": "mlx5_core",
        "iommu_group/type": "identity",
        "sriov_totalvfs": "16",
        "numa_node": numa,
    }


def test_h100_exact():
    wire, out = run(PciProbe(), fixture_host("h100-server"))
    gpus = {a: _h100_gpu(a, n) for a, n in H100_GPUS}
    nics = {"0000:1a:00.0": _cx7("0000:1a:00.0", "0"), "0000:9c:00.0": _cx7("0000:9c:00.0", "1")}
    bridge = {
        "0000:00:00.0": {
            "address": "0000:00:00.0",
            "class": "0880",
            "vendor": "8086",
            "device": "09a2",
            "subsystem_vendor": "15d9",
            "subsystem_device": "1d4c",
            "numa_node": "0",
        }
    }
    expected = [v for _, v in sorted({**gpus, **nics, **bridge}.items())]
    assert instances(wire, "pci.device") == expected
    assert out.notes == []
    assert set(wire["instances"]) == {"pci.device"} and wire["flags"] == {} and wire["attributes"] == {}


def test_mi300_exact():
    wire, _ = run(PciProbe(), fixture_host("amd-mi300"))
    mi300 = {
        "class": "1200",
        "vendor": "1002",
        "device": "74a1",
        "subsystem_vendor": "1002",
        "subsystem_device": "74a1",
        "driver": "amdgpu",
        "iommu_group/type": "DMA-FQ",
    }
    assert instances(wire, "pci.device") == [
        {**mi300, "address": "0000:05:00.0", "numa_node": "0"},
        {
            "address": "0000:41:00.0",
            "class": "0200",
            "vendor": "14e4",
            "device": "1750",
            "subsystem_vendor": "14e4",
            "subsystem_device": "2100",
            "driver": "bnxt_en",
            "numa_node": "0",
        },
        {**mi300, "address": "0000:85:00.0", "numa_node": "1"},
    ]


def test_plain_vm_exact():
    wire, _ = run(PciProbe(), fixture_host("plain-vm"))

    def virtio(addr: str, dev: str, cls: str) -> dict[str, str]:
        return {
            "address": addr,
            "class": cls,
            "vendor": "1af4",
            "device": dev,
            "subsystem_vendor": "1af4",
            "subsystem_device": dev,
            "driver": "virtio-pci",
            "numa_node": "-1",
        }

    assert instances(wire, "pci.device") == [
        {
            "address": "0000:00:00.0",
            "class": "0600",
            "vendor": "8086",
            "device": "0d57",
            "subsystem_vendor": "0000",
            "subsystem_device": "0000",
            "numa_node": "-1",
        },
        virtio("0000:00:01.0", "1045", "ffff"),
        virtio("0000:00:02.0", "1042", "0180"),
        virtio("0000:00:03.0", "1041", "0200"),
        virtio("0000:00:04.0", "1053", "ffff"),
        virtio("0000:00:05.0", "1044", "ffff"),
    ]


def test_real_host_matches_sysfs():
    wire, _ = run(PciProbe(), REAL)
    got = {i["address"]: i for i in instances(wire, "pci.device") or []}
    base = "/sys/bus/pci/devices"
    assert sorted(got) == sorted(os.listdir(base))
    for bdf, inst in got.items():
        with open(f"{base}/{bdf}/vendor") as f:
            assert inst["vendor"] == f.read().strip().removeprefix("0x")
        with open(f"{base}/{bdf}/class") as f:
            assert inst["class"] == f.read().strip().removeprefix("0x")[:4]
        drv = f"{base}/{bdf}/driver"
        if os.path.islink(drv):
            assert inst["driver"] == os.path.basename(os.readlink(drv))
        else:
            assert "driver" not in inst


def test_device_skipped_when_mandatory_file_unreadable(tmp_path):
    host = copy_fixture("plain-vm", tmp_path)
    make_unreadable(host, "/sys/bus/pci/devices/0000:00:02.0/subsystem_device")
    os.unlink(host.path("/sys/bus/pci/devices/0000:00:04.0/vendor"))
    wire, out = run(PciProbe(), host)
    assert [i["address"] for i in instances(wire, "pci.device") or []] == [
        "0000:00:00.0",
        "0000:00:01.0",
        "0000:00:03.0",
        "0000:00:05.0",
    ]
    assert out.notes == ["2 PCI device(s) skipped: a mandatory sysfs file was unreadable"]


def test_optional_values_omitted_when_unreadable(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    dev = "/sys/bus/pci/devices/0000:1a:00.0"
    make_unreadable(host, f"{dev}/sriov_totalvfs")
    os.unlink(host.path(f"{dev}/numa_node"))
    os.unlink(host.path(f"{dev}/driver"))
    wire, _ = run(PciProbe(), host)
    nic = next(i for i in instances(wire, "pci.device") or [] if i["address"] == "0000:1a:00.0")
    assert nic == {
        "address": "0000:1a:00.0",
        "class": "0200",
        "vendor": "15b3",
        "device": "1021",
        "subsystem_vendor": "15b3",
        "subsystem_device": "0041",
        "iommu_group/type": "identity",
    }


def test_missing_sysfs_leaves_the_feature_out_as_nfd(tmp_path):
    """NFD source/pci/pci.go: detectPci()'s ReadDir error -> Discover() error -> pci.device absent."""
    wire, out = run(PciProbe(), HostRoot(tmp_path))
    assert instances(wire, "pci.device") is None
    assert out.notes == ["/sys/bus/pci/devices cannot be listed: pci.device left out, as NFD does"]
    (tmp_path / "sys/bus/pci/devices").mkdir(parents=True)
    wire, out = run(PciProbe(), HostRoot(tmp_path))
    assert instances(wire, "pci.device") == [] and out.notes == []


def test_hex_helpers():
    assert strip_hex("0x10DE\n") == "10DE"
    assert strip_hex("10de") == "10de"
    assert class_code("0x030200") == "0302"
    assert class_code("0x0b4000") == "0b40"


def test_pci_address_of_walks_up_from_virtio_child():
    host = fixture_host("plain-vm")
    assert pci_address_of(host, "/sys/class/net/eth0/device") == "0000:00:03.0"
    assert pci_address_of(host, "/sys/class/net/lo/device") is None


def test_symlink_loop_does_not_crash(tmp_path):
    host = copy_fixture("plain-vm", tmp_path)
    link = host.path("/sys/class/net/eth0/device")
    os.unlink(link)
    os.symlink("device", link)  # points at itself
    assert pci_address_of(host, "/sys/class/net/eth0/device") is None


def test_strip_hex_is_the_lowercased_prefix_rule_for_any_text():
    """strip_hex drops a "0x"/"0X" prefix exactly when value.strip().lower().startswith("0x") (its rule
    before it checked the two characters instead of lowering the value): no code point but "0", "x" and
    "X" lowers to text starting with "0" or "x" ("\u0130" lowers to two code points, the Kelvin sign to k)."""
    import sys

    def reference(value: str) -> str:
        v = value.strip()
        return v[2:] if v.lower().startswith("0x") else v

    starting = {c for c in map(chr, range(sys.maxunicode + 1)) if c.lower()[:1] in ("0", "x")}
    assert starting == {"0", "x", "X"}
    for c in [*starting, "\u0130", "\u212a", "\u0445", "\uff10", "\uff58", " ", "\n"]:
        for text in (c + "x10", "0" + c + "10", c + c, c):
            assert strip_hex(text) == reference(text), repr(text)
    for text in ("0x10de", "0X10DE", " 0x\n", "0x", "0", "", "x0", "\u0130x1"):
        assert strip_hex(text) == reference(text)
