"""What the probes derive from files they read is kept between rounds for the same text (issue 11 row (a): a
first round's own Python), never for other text: each round reads every file, a changed file gives the
facts a fresh derivation gives, a kept object is the same object only while its inputs read the same, and
long host text is derived every time, never kept."""

from __future__ import annotations

import os

from support_hosts import copy_fixture

from nodecompat.features import Features
from nodecompat.probes import sysfs_pci
from nodecompat.probes.gpu import GpuProbe
from nodecompat.probes.pci import PciProbe
from nodecompat.probes.round_host import RoundHost

GPU_A, GPU_B = "0000:18:00.0", "0000:9a:00.0"


def _round(host, *probes):  # type: ignore[no-untyped-def]
    """One round's features of `probes` on a new round host of `host`."""
    rh = RoundHost.over(host)
    out = Features()
    for p in probes:
        out.merge(p.discover(rh).features)
    return rh, out


def _kept(host, *probes):  # type: ignore[no-untyped-def]
    """Each probe's instance objects, by feature, of one round."""
    rh = RoundHost.over(host)
    got = {}
    for p in probes:
        for name, feat in p.discover(rh).features.instances.items():
            got[name] = list(feat.elements)
    return got


def test_pci_and_gpu_instances_follow_their_files(tmp_path):
    """gpu.device and pci.device: the same objects while the device's files read the same; a changed
    information Model, numa_node or device id gives, for that device only, what a fresh derivation gives
    (this test's expected values; sysfs_pci cleared for the fresh one)."""
    host = copy_fixture("h100-server", tmp_path)
    probes = (GpuProbe(), PciProbe())
    first = _kept(host, *probes)
    again = _kept(host, *probes)
    for name in ("gpu.device", "pci.device"):
        assert len(first[name]) == len(again[name]) > 0
        assert all(a is b for a, b in zip(first[name], again[name], strict=True))

    info = host.path(f"/proc/driver/nvidia/gpus/{GPU_A}/information")
    info.write_text(info.read_text().replace("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"))
    host.path(f"/sys/bus/pci/devices/{GPU_B}/numa_node").write_text("3\n")
    changed = _kept(host, *probes)
    by_addr = {i.attributes["address"]: i for i in changed["gpu.device"]}
    assert by_addr[GPU_A].attributes["product"] == "NVIDIA A100-SXM4-80GB"
    assert by_addr[GPU_A].attributes["compute_capability"] == "8.0"
    assert by_addr[GPU_A].attributes["architecture"] == "Ampere"
    assert by_addr[GPU_B].attributes["numa_node"] == "3"
    pci_b = [i for i in changed["pci.device"] if i.attributes["address"] == GPU_B]
    assert pci_b[0].attributes["numa_node"] == "3"
    for old, new in zip(first["gpu.device"], changed["gpu.device"], strict=True):
        assert (old is new) == (old.attributes["address"] not in (GPU_A, GPU_B))

    sysfs_pci._DEVICES.clear()  # a fresh derivation of every device gives the same facts
    _, kept = _round(host, *probes)
    sysfs_pci._DEVICES.clear()
    _, fresh = _round(host, *probes)
    assert kept.to_nfd() == fresh.to_nfd()


def test_a_device_with_long_file_text_is_read_not_kept(tmp_path):
    """A device whose files hold more than MAX_DEVICE_CHARS characters (a host root's file may be long)
    is published as read, and built again each round, never kept."""
    host = copy_fixture("h100-server", tmp_path)
    long_type = "DMA" + "x" * sysfs_pci.MAX_DEVICE_CHARS
    group = host.path(f"/sys/bus/pci/devices/{GPU_A}/iommu_group")
    os.makedirs(group, exist_ok=True)
    (group / "type").write_text(long_type + "\n")
    sysfs_pci._DEVICES.clear()
    first = _kept(host, PciProbe())["pci.device"]
    again = _kept(host, PciProbe())["pci.device"]
    a1 = next(i for i in first if i.attributes["address"] == GPU_A)
    a2 = next(i for i in again if i.attributes["address"] == GPU_A)
    assert a1.attributes["iommu_group/type"] == long_type
    assert a1 is not a2 and a1.attributes == a2.attributes
    assert not any(k[0] == GPU_A for k in sysfs_pci._DEVICES)


def test_kernel_features_follow_their_files(tmp_path):
    """kernel.config, kernel.loadedmodule and kernel.enabledmodule: the same objects while the config,
    /proc/modules and modules.builtin read the same; a module loaded (a new /proc/modules text) gives the
    sets a fresh parse gives (NFD source/kernel/modules.go: loaded = /proc/modules' first column, enabled =
    loaded + modules.builtin's basenames), the config object kept as its file is unchanged."""
    from nodecompat.probes.kernel import KernelProbe, parse_modules

    host = copy_fixture("h100-server", tmp_path)

    def feats():  # type: ignore[no-untyped-def]
        return KernelProbe().discover(RoundHost.over(host)).features

    first, again = feats(), feats()
    for name in ("kernel.loadedmodule", "kernel.enabledmodule"):
        assert first.flags[name] is again.flags[name]
    assert first.attributes["kernel.config"] is again.attributes["kernel.config"]

    modules = host.path("/proc/modules")
    modules.write_text(modules.read_text() + "vfio_pci 16384 0 - Live 0x0000000000000000\n")
    changed = feats()
    loaded = parse_modules(modules.read_text())
    assert "vfio_pci" in loaded and changed.flags["kernel.loadedmodule"].elements == loaded
    enabled = changed.flags["kernel.enabledmodule"].elements
    builtin = first.flags["kernel.enabledmodule"].elements - first.flags["kernel.loadedmodule"].elements
    assert enabled == loaded | builtin
    assert changed.attributes["kernel.config"] is first.attributes["kernel.config"]


def test_text_kept_bounds():
    """probes/textkept.py: an input longer than max_chars is derived every time and never kept; the map
    never holds more than max_entries inputs."""
    from nodecompat.probes.textkept import TextKept

    kept: TextKept[list[str]] = TextKept(max_entries=3, max_chars=10)
    made: list[str] = []

    def make(k: str):  # type: ignore[no-untyped-def]
        return lambda: made.append(k) or [k]

    first = kept.get(("a", "bcd"), make("abcd"))
    assert kept.get(("a", "bcd"), make("abcd")) is first and made == ["abcd"]
    long = "x" * 11
    assert kept.get(long, make(long)) == [long] and kept.get(long, make(long)) == [long]
    assert made == ["abcd", long, long] and kept.peek(long) is None
    for k in ("1", "2", "3", "4"):
        kept.get(k, make(k))
        assert len(kept) <= 3


def test_local_parse_follows_text_and_expiry():
    """local: a feature file's parse is kept for the same path and text while its expiry times answer the
    same (NFD source/local/local.go parseFeatureFile drops lines after an expiry-time that has passed), so a
    passed expiry drops the lines as a fresh parse does, and a changed text is parsed again."""
    from datetime import UTC, datetime

    from nodecompat.probes.local import _parse, parse_feature_file

    text = "a=1\n# +expiry-time=2030-01-01T00:00:00Z\nb=2\n"
    before, after = datetime(2029, 6, 1, tzinfo=UTC), datetime(2030, 6, 1, tzinfo=UTC)
    p1 = _parse("/f", text, before)
    assert p1.features == {"a": "1", "b": "2"} == parse_feature_file(text, "/f", before).features
    assert _parse("/f", text, datetime(2029, 7, 1, tzinfo=UTC)) is p1  # the same answers: kept
    p2 = _parse("/f", text, after)
    assert p2.features == {"a": "1"} == parse_feature_file(text, "/f", after).features
    assert _parse("/f", text, before).features == {"a": "1", "b": "2"}  # the clock set back over it
    assert _parse("/f", text.replace("a=1", "a=3"), before).features == {"a": "3", "b": "2"}
    assert _parse("/g", "# +bogus\n", before).errors == ["/g:1: unknown feature file directive 'bogus'"]


def test_hugepages_and_os_release_follow_their_files(tmp_path):
    """hugepages: a pool that appears (a new listing) is published as a fresh derivation publishes it; system:
    os-release's feature object is kept while the text is the same, re-parsed when it changes."""
    from nodecompat.probes.hugepages import HugepagesProbe
    from nodecompat.probes.system import SystemProbe

    host = copy_fixture("h100-server", tmp_path)
    _, before = _round(host, HugepagesProbe(), SystemProbe(node_name="n"))
    _, same = _round(host, HugepagesProbe(), SystemProbe(node_name="n"))
    assert before.to_nfd() == same.to_nfd()
    pool = host.path("/sys/devices/system/node/node1/hugepages/hugepages-64kB")
    pool.mkdir()
    (pool / "nr_hugepages").write_text("7\n")
    (pool / "free_hugepages").write_text("5\n")
    osr = host.path("/etc/os-release")
    osr.write_text(osr.read_text() + 'VARIANT_ID="test"\n')
    _, after = _round(host, HugepagesProbe(), SystemProbe(node_name="n"))
    nodes = [i.attributes for i in after.instances["memory.hugepages.node"].elements]
    assert {"node": "1", "size": "64Ki", "total": "7", "free": "5"} in nodes
    assert len(nodes) == len(before.instances["memory.hugepages.node"].elements) + 1
    assert after.attributes["system.osrelease"].elements["VARIANT_ID"] == "test"


def test_nic_and_storage_instances_follow_their_files(tmp_path):
    """network.device / network.virtual / storage.block: the same instance objects while the files read the
    same; a changed speed, operstate or rotational value gives that interface's (device's) fresh facts (NFD
    source/network and source/storage: each file's text as is, trimmed for storage)."""
    from nodecompat.probes.nic import NicProbe
    from nodecompat.probes.storage import StorageProbe

    host = copy_fixture("plain-vm", tmp_path)  # eth0 (virtio: its PCI function found up the path), ifb0, lo, vda
    probes = (NicProbe(), StorageProbe())
    first, again = _kept(host, *probes), _kept(host, *probes)
    for name in ("network.device", "network.virtual", "storage.block"):
        assert first[name] and all(a is b for a, b in zip(first[name], again[name], strict=True))
    phys = first["network.device"][0].attributes["name"]
    host.path(f"/sys/class/net/{phys}/speed").write_text("400000\n")
    host.path("/sys/class/net/ifb0/operstate").write_text("up\n")
    disk = first["storage.block"][0].attributes["name"]
    rot = host.path(f"/sys/block/{disk}/queue/rotational")
    rot.write_text("1\n" if rot.read_text().strip() == "0" else "0\n")
    changed = _kept(host, *probes)
    dev = {i.attributes["name"]: i.attributes for i in changed["network.device"]}
    virt = {i.attributes["name"]: i.attributes for i in changed["network.virtual"]}
    assert dev[phys]["speed"] == "400000" and virt["ifb0"]["operstate"] == "up"
    assert {k: v for k, v in dev[phys].items() if k != "speed"} == {
        k: v for k, v in first["network.device"][0].attributes.items() if k != "speed"}
    assert changed["storage.block"][0].attributes["rotational"] == rot.read_text().strip()
    _, kept = _round(host, *probes)
    from nodecompat.probes import nic, storage

    nic._INSTANCES.clear()
    storage._INSTANCES.clear()
    _, fresh = _round(host, *probes)
    assert kept.to_nfd() == fresh.to_nfd()


def test_gpu_driver_and_cpu_topology_follow_their_files(tmp_path):
    """gpu.driver (without NVML) is the same object while the version file and the GPUs' drivers read the
    same, a new driver version gives its fresh facts; cpu.topology follows a CPU added to the listing (NFD
    source/cpu discoverTopology: every cpu's thread_siblings_list and physical_package_id)."""
    from nodecompat.probes.cpu import CpuProbe

    host = copy_fixture("h100-server", tmp_path)
    first, again = (GpuProbe().discover(RoundHost.over(host)).features for _ in range(2))
    assert first.attributes["gpu.driver"] is again.attributes["gpu.driver"]
    host.path("/sys/module/nvidia/version").write_text("535.161.08\n")
    driver = _round(host, GpuProbe())[1].attributes["gpu.driver"].elements
    assert (driver["version"], driver["major"], driver["revision"], driver["cuda_version"]) == (
        "535.161.08", "535", "08", "12.2")

    topo = _round(host, CpuProbe())[1].attributes["cpu.topology"].elements
    cpus = host.path("/sys/bus/cpu/devices")
    last = sorted(p.name for p in cpus.iterdir())[-1]
    new = cpus / "cpu999"
    new.mkdir()
    (new / "topology").mkdir()
    (new / "topology" / "thread_siblings_list").write_text("999\n")
    (new / "topology" / "physical_package_id").write_text("7\n")
    grown = _round(host, CpuProbe())[1].attributes["cpu.topology"].elements
    assert int(grown["socket_count"]) == int(topo["socket_count"]) + 1, last
