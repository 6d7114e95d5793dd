"""libc and sysctl probes (nodecompat additions): host trees, this machine, bad names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from support_hosts import REAL, attrs, run

from nodecompat.hostroot import HostRoot
from nodecompat.probes.libc import LibcProbe, apk_package_version, glibc_version
from nodecompat.probes.sysctl import DEFAULT_SYSCTLS, SysctlProbe, parse_names


def write(root: Path, rel: str, data: str | bytes) -> None:
    p = root / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())


# A stand-in for libc.so.6: ELF magic, filler, the banner csu/version.c compiles in, more filler.
FAKE_GLIBC = (
    b"\x7fELF\x02\x01\x01" + b"\x00" * 4000
    + b"GNU C Library (GNU libc) stable release version 2.34.\nCopyright (C) 2021 Free Software Foundation"
    + b"\x00" * 4000
)  # fmt: skip


def test_glibc_from_lib64_banner(tmp_path):
    """RHEL 9 / Amazon Linux 2023 layout: /lib64 -> usr/lib64 (usrmerge link resolved inside the root)."""
    write(tmp_path, "/usr/lib64/libc.so.6", FAKE_GLIBC)
    os.symlink("usr/lib64", tmp_path / "lib64")
    wire, out = run(LibcProbe(), HostRoot(tmp_path))
    assert attrs(wire, "system.libc") == {
        "implementation": "glibc",
        "version": "2.34",
        "major": "2",
        "minor": "34",
        "path": "/lib64/libc.so.6",
    }
    assert out.notes == []


def test_glibc_banner_variants():
    assert glibc_version(b"GNU C Library (Ubuntu GLIBC 2.35-0ubuntu3.8) stable release version 2.35.") == "2.35"
    assert glibc_version(b"GNU C Library (GNU libc) development release version 2.39.9000.") == "2.39.9000"
    assert glibc_version(b"GNU C Library (GNU libc) stable release version 2.17, by Roland McGrath") == "2.17"
    assert glibc_version(b"no banner here") is None


def test_musl_version_from_apk_database(tmp_path):
    write(tmp_path, "/lib/ld-musl-x86_64.so.1", b"\x7fELF")
    write(
        tmp_path,
        "/lib/apk/db/installed",
        "C:Q1abc=\nP:busybox\nV:1.36.1-r29\n\nC:Q1def=\nP:musl\nV:1.2.5-r0\nA:x86_64\n",
    )
    wire, _ = run(LibcProbe(), HostRoot(tmp_path))
    assert attrs(wire, "system.libc") == {
        "implementation": "musl",
        "version": "1.2.5",
        "major": "1",
        "minor": "2",
        "revision": "5",
        "path": "/lib/ld-musl-x86_64.so.1",
    }


def test_musl_without_package_database_has_no_version(tmp_path):
    write(tmp_path, "/lib/ld-musl-aarch64.so.1", b"\x7fELF")
    wire, out = run(LibcProbe(), HostRoot(tmp_path))
    assert attrs(wire, "system.libc") == {"implementation": "musl", "path": "/lib/ld-musl-aarch64.so.1"}
    assert "version left out" in out.notes[0]
    assert apk_package_version("P:musl\nV:1.2.4-r2\n", "musl") == "1.2.4"


def test_no_libc_leaves_feature_out(tmp_path):
    wire, out = run(LibcProbe(), HostRoot(tmp_path))
    assert attrs(wire, "system.libc") is None and "system.libc left out" in out.notes[0]


def test_real_host_libc_matches_ldd():
    """This machine: the version read from libc.so.6 equals what `ldd --version` prints (run here, in the test
    only: the probe never executes host code)."""
    try:
        first = subprocess.run(["ldd", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError):
        pytest.skip("no ldd here")
    m = re.search(r"(\d+\.\d+)\s*$", first)
    assert m, first
    assert (attrs(run(LibcProbe(), REAL)[0], "system.libc") or {}).get("version") == m.group(1)


def test_sysctl_allow_list_values_normalised(tmp_path):
    write(tmp_path, "/proc/sys/vm/max_map_count", "262144\n")
    write(tmp_path, "/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
    write(tmp_path, "/proc/sys/kernel/unprivileged_userns_clone", "1\n")
    write(tmp_path, "/proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n")
    wire, out = run(SysctlProbe(extra=["net.ipv4.tcp_rmem"]), HostRoot(tmp_path))
    assert attrs(wire, "kernel.sysctl") == {
        "vm.max_map_count": "262144",
        "net.ipv4.ip_local_port_range": "32768 60999",
        "kernel.unprivileged_userns_clone": "1",
        "net.ipv4.tcp_rmem": "4096 131072 6291456",
    }
    assert "user.max_user_namespaces" in out.notes[0]  # not on this tree: left out and said


def test_sysctl_real_host_matches_proc_sys():
    got = attrs(run(SysctlProbe(), REAL)[0], "kernel.sysctl") or {}
    for name in DEFAULT_SYSCTLS:
        path = "/proc/sys/" + name.replace(".", "/")
        if os.path.exists(path):
            with open(path) as f:
                assert got[name] == " ".join(f.read().split())
        else:
            assert name not in got


@pytest.mark.parametrize("bad", ["../etc/passwd", "vm/max_map_count", "vm..x", "single", "a.b c", "x" * 300])
def test_sysctl_names_are_checked(bad):
    with pytest.raises(ValueError, match="--sysctl"):
        parse_names([bad])


def test_sysctl_names_comma_separated_and_repeatable():
    assert parse_names(["net.core.rmem_max,net.core.wmem_max", "net.core.rmem_max"]) == [
        "net.core.rmem_max",
        "net.core.wmem_max",
    ]
    with pytest.raises(ValueError, match="at most"):
        parse_names([",".join(f"a.b{i}" for i in range(100))])


def test_serve_refuses_a_bad_sysctl_name():
    """`nodecompat serve --sysctl` is checked before anything starts (exit 2, message names the flag)."""
    import sys

    exe = str(Path(sys.executable).parent / "nodecompat")
    r = subprocess.run([exe, "serve", "--listen", "127.0.0.1:0", "--sysctl", "vm.ok,../etc/passwd"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--sysctl '../etc/passwd'" in r.stderr, r.stderr


def test_daemon_hands_sysctl_names_to_the_probe():
    from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon

    daemon = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", probes=["sysctl"], sysctl=["net.core.rmem_max"]))
    try:
        (probe,) = daemon.runner.probes
        assert probe.sysctl_extra == ["net.core.rmem_max"]
    finally:
        daemon.stop(grace=0)
