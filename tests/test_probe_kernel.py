"""kernel probe: fixture trees (exact), this machine, unreadable files, NFD parser edge cases."""

from __future__ import annotations

import gzip
import os

import pytest
from support_hosts import REAL, attrs, copy_fixture, fixture_host, flags, make_unreadable, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.kernel import (
    KernelProbe,
    kconfig_search_paths,
    parse_builtin_modules,
    parse_kconfig,
    parse_kernel_version,
    parse_modules,
    read_kconfig,
)

H100_LOADED = {
    "nvidia_uvm",
    "nvidia_drm",
    "nvidia_modeset",
    "nvidia",
    "rdma_ucm",
    "ib_uverbs",
    "mlx5_ib",
    "mlx5_core",
    "vfio_pci",
}


def test_h100_exact():
    wire, out = run(KernelProbe(), fixture_host("h100-server"))
    assert attrs(wire, "kernel.version") == {
        "full": "5.15.0-91-generic",
        "major": "5",
        "minor": "15",
        "revision": "0",
    }
    assert flags(wire, "kernel.loadedmodule") == H100_LOADED
    assert flags(wire, "kernel.enabledmodule") == H100_LOADED | {
        "vfio-pci-core",
        "pcieportdrv",
        "ext4",
        "sha256_generic",
    }
    assert attrs(wire, "kernel.config") == {
        "CC_VERSION_TEXT": "gcc (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0",
        "64BIT": "y",
        "NUMA": "y",
        "NODES_SHIFT": "10",
        "HUGETLBFS": "y",
        "TRANSPARENT_HUGEPAGE": "y",
        "PCI_IOV": "y",
        "VFIO": "m",
        "VFIO_PCI": "m",
        "MLX5_CORE": "m",
        "NO_HZ_FULL": "y",
        "PREEMPT_VOLUNTARY": "y",
        "LOCALVERSION": "",
        "IOMMU_DEFAULT_DMA_LAZY": "y",
    }
    assert attrs(wire, "kernel.selinux") == {"enabled": "false"}
    assert attrs(wire, "kernel.kvm") == {"enabled": "true"}
    assert set(wire["attributes"]) == {"kernel.version", "kernel.config", "kernel.selinux", "kernel.kvm"}
    assert out.notes == []


def test_mi300_exact():
    wire, out = run(KernelProbe(), fixture_host("amd-mi300"))
    assert attrs(wire, "kernel.version") == {
        "full": "5.14.0-362.8.1.el9_3.x86_64",
        "major": "5",
        "minor": "14",
        "revision": "0",
    }
    assert flags(wire, "kernel.loadedmodule") == {
        "amdgpu",
        "amddrm_ttm_helper",
        "amdxcp",
        "bnxt_en",
        "kvm_amd",
    }
    assert flags(wire, "kernel.enabledmodule") is None  # no modules.builtin in this tree
    # /proc/config.gz wins over /boot/config-<v> (NFD's order).
    assert attrs(wire, "kernel.config") == {
        "64BIT": "y",
        "NUMA": "y",
        "HSA_AMD": "y",
        "DRM_AMDGPU": "m",
        "PREEMPT_NONE": "y",
        "NR_CPUS": "8192",
        "DEFAULT_HOSTNAME": "(none)",
    }
    assert attrs(wire, "kernel.selinux") == {"enabled": "true"}
    assert attrs(wire, "kernel.kvm") == {"enabled": "false"}
    assert out.notes == [
        "/lib/modules/5.14.0-362.8.1.el9_3.x86_64/modules.builtin unreadable: "
        "kernel.enabledmodule left out, as NFD does"
    ]


def test_plain_vm_monolithic_kernel():
    wire, out = run(KernelProbe(), fixture_host("plain-vm"))
    assert attrs(wire, "kernel.version") == {
        "full": "6.18.44-fc-v445",
        "major": "6",
        "minor": "18",
        "revision": "44",
    }
    assert wire["flags"] == {}  # neither loadedmodule nor enabledmodule
    assert attrs(wire, "kernel.config") == {
        "64BIT": "y",
        "X86_64": "y",
        "VIRTIO_NET": "y",
        "IKCONFIG_PROC": "y",
        "HZ": "1000",
        "LOCALVERSION": "-fc-v445",
    }
    assert out.notes[0].startswith("/proc/modules is missing (monolithic kernel")


def test_real_host():
    wire, out = run(KernelProbe(), REAL)
    assert (attrs(wire, "kernel.version") or {}).get("full") == os.uname().release
    if os.path.exists("/proc/modules"):
        with open("/proc/modules") as f:
            assert flags(wire, "kernel.loadedmodule") == {line.split()[0] for line in f if line.strip()}
    else:
        assert flags(wire, "kernel.loadedmodule") is None
        assert any("monolithic" in n for n in out.notes)
    if os.path.exists("/proc/config.gz"):
        with gzip.open("/proc/config.gz", "rt") as f:
            ref = {ln.split("=", 1)[0][7:] for ln in f if ln.startswith("CONFIG_") and "=" in ln}
        assert set(attrs(wire, "kernel.config") or {}) == ref
    assert attrs(wire, "kernel.kvm") == {
        "enabled": str(os.path.exists("/sys/devices/virtual/misc/kvm")).lower()
    }


def test_everything_unreadable_still_delivers(tmp_path):
    host = copy_fixture("h100-server", tmp_path)
    make_unreadable(host, "/proc/sys/kernel/osrelease")
    make_unreadable(host, "/proc/modules")
    wire, out = run(KernelProbe(), host)
    assert attrs(wire, "kernel.version") is None
    assert attrs(wire, "kernel.config") is None  # /boot/config-<v> needs the version
    assert flags(wire, "kernel.loadedmodule") is None and flags(wire, "kernel.enabledmodule") is None
    assert attrs(wire, "kernel.selinux") == {"enabled": "false"}
    assert len(out.notes) == 4


def test_selinux_as_nfd(tmp_path):
    """NFD source/kernel/selinux.go: no /sys/fs -> error (absent); no enforce -> false; '1' -> true."""
    wire, out = run(KernelProbe(), HostRoot(tmp_path))
    assert attrs(wire, "kernel.selinux") is None and any("kernel.selinux left out" in n for n in out.notes)
    (tmp_path / "sys/fs").mkdir(parents=True)
    assert attrs(run(KernelProbe(), HostRoot(tmp_path))[0], "kernel.selinux") == {"enabled": "false"}
    (tmp_path / "sys/fs/selinux").mkdir()
    (tmp_path / "sys/fs/selinux/enforce").write_text("1")
    assert attrs(run(KernelProbe(), HostRoot(tmp_path))[0], "kernel.selinux") == {"enabled": "true"}


def test_corrupt_config_gz_falls_through(tmp_path):
    host = copy_fixture("amd-mi300", tmp_path)
    host.path("/proc/config.gz").write_bytes(b"\x1f\x8bnot really gzip")
    wire, _ = run(KernelProbe(), host)
    assert attrs(wire, "kernel.config") == {"FROM_BOOT": "y"}


def test_configured_kconfig_file_first(tmp_path):
    host = copy_fixture("amd-mi300", tmp_path)
    host.path("/etc/kconfig").write_text("CONFIG_MINE=y\n")
    wire, _ = run(KernelProbe(kconfig_file="/etc/kconfig"), host)
    assert attrs(wire, "kernel.config") == {"MINE": "y"}


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.8", {"full": "6.8", "major": "6", "minor": "8", "revision": ""}),
        ("6", {"full": "6", "major": "6", "minor": "", "revision": ""}),
        (
            "6.0.10-100+123.x86_64~",
            {"full": "6.0.10-100_123.x86_64", "major": "6", "minor": "0", "revision": "10"},
        ),
        ("5.15.0-91-generic\n", {"full": "5.15.0-91-generic", "major": "5", "minor": "15", "revision": "0"}),
        ("--weird kernel--", {"full": "weird_kernel"}),
        ("6.1.0_rc1", {"full": "6.1.0_rc1"}),  # no '-' before the suffix: regex does not match
    ],
)
def test_parse_kernel_version(release, expected):
    assert parse_kernel_version(release) == expected


def test_parse_kconfig_edge_cases():
    text = (
        'CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D="quoted string"\nCONFIG_E=0x10\n'
        'CONFIG_F=\nCONFIG_NOEQUALS\n CONFIG_G=y\nCONFIG_H="a=b"\n\x00garbage\n'
    )
    assert parse_kconfig(text) == {"A": "y", "B": "m", "D": "quoted string", "E": "0x10", "F": "", "H": "a=b"}


def test_module_parsers():
    assert parse_modules("nvidia 1 0 - Live 0x0\n\nvfio_pci 2 0 - Live 0x0 (O)\n") == {"nvidia", "vfio_pci"}
    # NFD modules.go getBuiltinModules(): lines not ending in .ko are skipped
    assert parse_builtin_modules("kernel/drivers/vfio/pci/vfio-pci.ko\n\nkernel/fs/ext4/ext4.ko\nodd\n") == {
        "vfio-pci",
        "ext4",
    }


def test_search_order_matches_nfd():
    paths = kconfig_search_paths("6.1.0")
    assert paths[0] == "/proc/config.gz" and paths[-1] == "/boot/config-6.1.0"
    assert paths.index("/usr/src/linux-6.1.0/.config") < paths.index("/usr/lib/modules/6.1.0/config")
    assert kconfig_search_paths(None) == ["/proc/config.gz", "/usr/src/linux/.config"]
    assert read_kconfig(fixture_host("plain-vm"), None) is not None  # /proc/config.gz needs no version


def test_a_kernel_config_is_stated_once_per_round_once_parsed(tmp_path):
    """kconfig() takes each candidate's identity once: the parse cache (probes/parsecache.py) is handed the
    identity the search just took, so a config parsed in an earlier round costs one stat on the round's
    host, not two; a changed file is still parsed anew (its identity differs)."""
    from nodecompat.probes.round_host import RoundHost

    host = copy_fixture("h100-server", tmp_path)
    cfg = "/boot/config-5.15.0-91-generic"
    stats: list[str] = []

    class Counting(RoundHost):
        def stat_or_none(self, text: str) -> os.stat_result | None:
            stats.append(text)
            return super().stat_or_none(text)

    first = KernelProbe().discover(Counting.over(host))  # parsed (kept for the next rounds)
    assert first.features.attributes["kernel.config"].elements["NUMA"] == "y"
    stats.clear()
    KernelProbe().discover(Counting.over(host))
    assert stats.count(cfg) == 1, stats
    with open(host.resolve(cfg), "a") as f:
        f.write("CONFIG_NODECOMPAT_TEST=y\n")
    out = KernelProbe().discover(Counting.over(host))
    assert out.features.attributes["kernel.config"].elements["NODECOMPAT_TEST"] == "y"


def test_modules_builtin_is_kept_between_rounds_while_the_file_is_unchanged(tmp_path):
    """kernel.builtin_modules: a later round on the same modules.builtin (same device, inode, size, mtime)
    does not read it again and publishes the same kernel.enabledmodule; a rewritten file is read again;
    a missing one is not read at all (its stat says so) and kernel.enabledmodule is left out, as NFD."""
    from nodecompat.probes.round_host import RoundHost

    host = copy_fixture("h100-server", tmp_path)
    builtin = "/lib/modules/5.15.0-91-generic/modules.builtin"
    reads: list[str] = []

    class Counting(RoundHost):
        def read_text(self, host_path, *, within=None):  # type: ignore[no-untyped-def]
            reads.append(str(host_path))
            return super().read_text(host_path, within=within)

    def enabled() -> set[str] | None:
        out = KernelProbe().discover(Counting.over(host))
        feat = out.features.flags.get("kernel.enabledmodule")
        return None if feat is None else set(feat.elements)

    first = enabled()
    assert first is not None and first > H100_LOADED and "vfio-pci-core" in first
    reads.clear()
    assert enabled() == first
    assert builtin not in reads
    path = host.path(builtin)
    path.write_text(path.read_text() + "kernel/drivers/test/nodecompat_test.ko\n")
    os.utime(path, ns=(1, 1))
    assert enabled() == first | {"nodecompat_test"}
    assert builtin in reads
    path.unlink()
    reads.clear()
    assert enabled() is None
    assert builtin not in reads


def test_parses_kept_between_rounds_are_bounded_in_bytes(tmp_path):
    """parsecache keeps a file's parse between rounds bounded by the files' bytes, not only by their count
    (32): host roots whose modules.builtin and kernel config are padded to ~4.8 MB each (a host root's file
    may be up to the 32 MiB read bound) give the same kernel features and leave no parse of them behind
    (was: every such parse kept, up to 32 files; 400,000-line files of ~17 MB: ~45 MB kept each)."""
    import gc
    import tracemalloc

    from nodecompat.probes import parsecache

    config = "/boot/config-5.15.0-91-generic"
    builtin = "/lib/modules/5.15.0-91-generic/modules.builtin"
    plain = run(KernelProbe(), fixture_host("h100-server"))[0]
    hosts = []
    for seed in range(2):
        host = copy_fixture("h100-server", tmp_path / str(seed))
        word = f"{tmp_path.name}_{seed}"  # new text each run: nothing kept from another test
        pad = "x" * 4000  # long lines: the bytes, not the parse's work (~4.8 MB a file)
        for path, line in ((builtin, "kernel/drivers/x/{}_{}_{}.ko\n"), (config, "# CONFIG_{}_{}_{} is not set\n")):
            p = host.path(path)
            p.write_text(p.read_text() + "".join(line.format(word, i, pad) for i in range(1_200)))
        hosts.append(host)
    parsecache.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for host in hosts:
            got = run(KernelProbe(), host)[0]
            assert {k: v for k, v in got["flags"].items() if k != "kernel.enabledmodule"} == {
                k: v for k, v in plain["flags"].items() if k != "kernel.enabledmodule"}
            assert got["attributes"] == plain["attributes"]
            del got  # its kernel.enabledmodule holds the padded names
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 3_000_000, f"{kept:,} bytes kept after two rounds"
