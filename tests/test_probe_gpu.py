"""gpu probe: H100 and MI300X fixture trees (exact), no-GPU host, unreadable files, parsers."""

from __future__ import annotations

import os
import shutil

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, instances, make_unreadable, run

from nodecompat.probes.gpu import GpuProbe, nvml_bus_id
from nodecompat.probes.gpu_arch import amd_architecture, gfx_target, nvidia_architecture
from nodecompat.probes.nvidia_info import (
    compute_capability,
    cuda_for_driver,
    cuda_from_nvml,
    information_model,
    parse_information,
    parse_nvrm_version,
    split_version,
)
from nodecompat.probes.pci_ids import lookup, marketing_name

H100_ADDRS = [
    ("0000:18:00.0", "0"),
    ("0000:2a:00.0", "0"),
    ("0000:3a:00.0", "0"),
    ("0000:5d:00.0", "0"),
    ("0000:9a:00.0", "1"),
    ("0000:ab:00.0", "1"),
    ("0000:ba:00.0", "1"),
    ("0000:db:00.0", "1"),
]
H100_DRIVER = {
    "name": "nvidia",
    "version": "550.54.15",
    "major": "550",
    "minor": "54",
    "revision": "15",
    "cuda_version": "12.4",
    "cuda_major": "12",
    "cuda_minor": "4",
}


def _h100(addr: str, numa: str, product: str = "NVIDIA H100 80GB HBM3") -> dict[str, str]:
    return {
        "vendor": "nvidia",
        "vendor_id": "10de",
        "device_id": "2330",
        "class": "0302",
        "address": addr,
        "numa_node": numa,
        "driver": "nvidia",
        "driver_version": "550.54.15",
        "product": product,
        "compute_major": "9",
        "compute_minor": "0",
        # as the NVIDIA DRA driver publishes them (deviceinfo.go: architecture, cudaComputeCapability)
        "compute_capability": "9.0",
        "architecture": "Hopper",
    }


def test_h100_exact():
    wire, out = run(GpuProbe(), fixture_host("h100-server"))
    assert instances(wire, "gpu.device") == [_h100(a, n) for a, n in H100_ADDRS]
    assert attrs(wire, "gpu.driver") == H100_DRIVER
    assert set(wire["instances"]) == {"gpu.device"} and set(wire["attributes"]) == {"gpu.driver"}
    assert out.notes == ["host root is not /: NVML not used, NVIDIA facts from sysfs/procfs"]


def test_mi300_exact():
    wire, out = run(GpuProbe(), fixture_host("amd-mi300"))
    base = {
        "vendor": "amd",
        "vendor_id": "1002",
        "device_id": "74a1",
        "class": "1200",
        "driver": "amdgpu",
        "driver_version": "6.3.6",
        "memory": "196608",
        "product": "Instinct MI300X",
        "gfx_target": "gfx942",  # KFD topology gfx_target_version 90402
        "architecture": "CDNA3",
    }
    assert instances(wire, "gpu.device") == [
        {**base, "address": "0000:05:00.0", "numa_node": "0"},
        {**base, "address": "0000:85:00.0", "numa_node": "1"},
    ]
    assert attrs(wire, "gpu.driver") == {
        "name": "amdgpu",
        "version": "6.3.6",
        "major": "6",
        "minor": "3",
        "revision": "6",
    }
    assert out.notes == []


def test_no_gpu_gives_zero_instances_and_no_driver():
    wire, out = run(GpuProbe(), fixture_host("plain-vm"))
    assert instances(wire, "gpu.device") == []
    assert attrs(wire, "gpu.driver") is None
    assert out.notes == ["no GPU found (no NVIDIA/AMD/Intel PCI display, 3D or accelerator device)"]


def test_real_host_has_no_gpu():
    """This sandbox has no GPU (no 03xx/1200/0b40 device of a GPU vendor), checked independently."""
    base = "/sys/bus/pci/devices"
    has_gpu = False
    for bdf in os.listdir(base):
        with open(f"{base}/{bdf}/class") as c, open(f"{base}/{bdf}/vendor") as v:
            cls, ven = c.read().strip()[2:6], v.read().strip()[2:]
        has_gpu |= ven in ("10de", "1002", "8086") and (cls.startswith("03") or cls in ("1200", "0b40"))
    wire, _ = run(GpuProbe(), REAL)
    assert (instances(wire, "gpu.device") != []) == has_gpu
    assert (attrs(wire, "gpu.driver") is not None) == has_gpu


def test_nvidia_without_module_version_uses_procfs_banner(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    os.unlink(host.path("/sys/module/nvidia/version"))
    wire, _ = run(GpuProbe(), host)
    assert attrs(wire, "gpu.driver") == H100_DRIVER


def test_nvidia_files_unreadable(tmp_path):
    """No version files and no information files: product from pci.ids, no driver version."""
    host = copy_fixture("h100-server", tmp_path)
    os.unlink(host.path("/sys/module/nvidia/version"))
    make_unreadable(host, "/proc/driver/nvidia/version")
    for a, _ in H100_ADDRS:
        make_unreadable(host, f"/proc/driver/nvidia/gpus/{a}/information")
    wire, out = run(GpuProbe(), host)
    expected = []
    for a, n in H100_ADDRS:
        inst = _h100(a, n, product="H100 SXM5 80GB")
        del inst["driver_version"]
        expected.append(inst)
    assert instances(wire, "gpu.device") == expected
    assert attrs(wire, "gpu.driver") is None
    assert "GPU driver version unknown: gpu.driver left out" in out.notes


def test_amd_vram_unreadable_omits_memory(tmp_path):
    host = copy_fixture("amd-mi300", tmp_path)
    make_unreadable(host, "/sys/bus/pci/devices/0000:05:00.0/mem_info_vram_total")
    wire, _ = run(GpuProbe(), host)
    first, second = instances(wire, "gpu.device") or []
    assert "memory" not in first and second["memory"] == "196608"


def test_gpu_bound_to_vfio_gets_no_driver_version(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    link = host.path("/sys/devices/pci0000:18/0000:18:00.0/driver")
    os.unlink(link)
    os.makedirs(host.path("/sys/bus/pci/drivers/vfio-pci"))
    os.symlink("../../../bus/pci/drivers/vfio-pci", link)
    wire, _ = run(GpuProbe(), host)
    first = (instances(wire, "gpu.device") or [])[0]
    assert first["driver"] == "vfio-pci" and "driver_version" not in first
    assert attrs(wire, "gpu.driver") == H100_DRIVER  # the other seven are on nvidia


def test_nvrm_banner_parsing():
    assert (
        parse_nvrm_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
        == "550.54.15"
    )
    assert (
        parse_nvrm_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build\n")
        == "535.104.05"
    )
    assert parse_nvrm_version("garbage\n") is None


def test_information_parsing():
    info = parse_information("Model: \t\t NVIDIA A100-SXM4-80GB\nBus Location: \t 0000:07:00.0\nnonsense\n")
    assert info == {"Model": "NVIDIA A100-SXM4-80GB", "Bus Location": "0000:07:00.0"}


@pytest.mark.parametrize(
    "text",
    [
        "Model: \t\t NVIDIA A100-SXM4-80GB\nBus Location: \t 0000:07:00.0\nnonsense\n",
        "IRQ: 305\nModel: first\n  Model  :  second : with colon \r\nModel\nModel Name: not it\n",
        "Model:\n",
        "ModelModel: x\nXModel: y\n",
        "no key here\n",
        "",
        "Model: a\u2028Model: b\x85c",  # splitlines' other separators
        "\x0bModel\x0c: spaced\n",
    ],
)
def test_information_model_is_the_parsed_model(text):
    """information_model (what the gpu probe publishes of the file) is parse_information's "Model"."""
    assert information_model(text) == parse_information(text).get("Model")


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("550.54.15", {"major": "550", "minor": "54", "revision": "15"}),
        ("535.104.05", {"major": "535", "minor": "104", "revision": "05"}),
        ("470.82", {"major": "470", "minor": "82"}),
        ("6.3.6-rc1", {"major": "6", "minor": "3"}),
        ("", {}),
    ],
)
def test_split_version(version, expected):
    assert split_version(version) == expected


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        ("550.54.15", "12.4"),
        ("550.54.14", "12.4"),
        ("550.40.07", "12.3"),
        ("535.104.05", "12.2"),
        ("580.65.06", "13.0"),
        ("440.33.01", None),
        ("bogus", None),
    ],
)
def test_cuda_for_driver(driver, cuda):
    assert cuda_for_driver(driver) == cuda


def test_compute_capability_and_nvml_helpers():
    assert compute_capability("NVIDIA H100 80GB HBM3") == (9, 0)
    assert compute_capability("NVIDIA A100-SXM4-80GB") == (8, 0)
    assert compute_capability("NVIDIA A10G") is None  # unknown variant: left out, not guessed
    assert compute_capability("Tesla T4") == (7, 5)
    assert cuda_from_nvml(12040) == "12.4" and cuda_from_nvml(11080) == "11.8"
    assert nvml_bus_id("00000000:18:00.0") == "0000:18:00.0"
    assert nvml_bus_id(b"00000001:AB:00.0") == "0001:ab:00.0"


@pytest.mark.parametrize(
    ("cc", "arch"),
    [
        ((7, 0), "Volta"),
        ((7, 5), "Turing"),
        ((8, 0), "Ampere"),
        ((8, 6), "Ampere"),
        ((8, 9), "Ada Lovelace"),
        ((9, 0), "Hopper"),
        ((10, 0), "Blackwell"),
        ((12, 0), "Blackwell"),
        ((4, 0), None),
    ],
)
def test_nvidia_architecture_from_compute_capability(cc, arch):
    """NVIDIA's compute-capability table; names as go-nvlib GetArchitectureAsString() (DRA driver)."""
    assert nvidia_architecture(*cc) == arch


@pytest.mark.parametrize(
    ("version", "target", "arch"),
    [
        (90402, "gfx942", "CDNA3"),
        (90010, "gfx90a", "CDNA2"),
        (90008, "gfx908", "CDNA"),
        (110000, "gfx1100", "RDNA3"),
        (100300, "gfx1030", "RDNA2"),
        (120001, "gfx1201", "RDNA4"),
        (90500, "gfx950", "CDNA4"),
        (80003, "gfx803", None),
    ],
)
def test_amd_gfx_target_and_architecture(version, target, arch):
    assert gfx_target(version) == target and amd_architecture(target) == arch


def test_amd_without_kfd_topology_has_no_architecture(tmp_path):
    host = copy_fixture("amd-mi300", tmp_path)
    shutil.rmtree(host.path("/sys/class/kfd"))
    wire, _out = run(GpuProbe(), host)
    assert all("architecture" not in i and "gfx_target" not in i for i in instances(wire, "gpu.device") or [])


def test_pci_ids_lookup():
    text = (
        "10de  NVIDIA Corporation\n\t2330  GH100 [H100 SXM5 80GB]\n\t\t10de 16c1  H100 SXM5 80GB\n"
        "\t2331  GH100 [H100 PCIe]\n1002  AMD\nC 03  Display controller\n"
    )
    n = lookup(text, "10DE", "2330", "10de", "16c1")
    assert (n.vendor, n.device, n.subsystem) == (
        "NVIDIA Corporation",
        "GH100 [H100 SXM5 80GB]",
        "H100 SXM5 80GB",
    )
    n = lookup(text, "10de", "2331", "10de", "0000")
    assert (n.device, n.subsystem) == ("GH100 [H100 PCIe]", None)
    assert lookup(text, "abcd", "0001") == lookup("", "10de", "2330")
    assert marketing_name("GH100 [H100 PCIe]") == "H100 PCIe"
    assert marketing_name("Instinct MI300X") == "Instinct MI300X"


def test_pci_ids_is_kept_between_rounds_while_the_file_is_unchanged(tmp_path):
    """pci_ids.host_pci_ids: a later round on the same pci.ids (same device, inode, size, mtime) neither
    reads it nor scans it again for a GPU already named, and names what a fresh read names; a rewritten
    file (new size and mtime) is read again and its new names published."""
    from nodecompat.probes.round_host import RoundHost

    host = copy_fixture("amd-mi300", tmp_path)
    ids = "/usr/share/hwdata/pci.ids"
    reads: list[str] = []

    class Counting(RoundHost):
        def read_text(self, host_path, *, within=None):  # type: ignore[no-untyped-def]
            reads.append(str(host_path))
            return super().read_text(host_path, within=within)

    def products() -> list[str]:
        out = GpuProbe().discover(Counting.over(host))
        return [i.attributes.get("product", "") for i in out.features.instances["gpu.device"].elements]

    first = products()
    assert first and set(first) == {"Instinct MI300X"}
    reads.clear()
    assert products() == first
    assert ids not in reads
    path = host.path(ids)
    text = path.read_text().replace("1002 74a1  Instinct MI300X", "1002 74a1  Instinct MI300X (renamed)")
    path.write_text(text)
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert set(products()) == {"Instinct MI300X (renamed)"}
    assert ids in reads
