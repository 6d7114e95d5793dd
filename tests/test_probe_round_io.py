"""How a probe round touches the host: directories held once per round (probes/held_parents.py), CPUID
read once per process (probes/hostcpu.py), and answers that stay HostRoot's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes import held_parents, hostcpu
from nodecompat.probes.round_host import RoundHost

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
SLASH = HostRoot(Path("/"))


def _answers(host: HostRoot, p: str) -> tuple[object, ...]:
    return (host.read_bytes(p), host.read_line(p), host.exists(p), host.is_dir(p), host.is_file(p),
            host.link_target_name(p), _resolved(host, p), _resolved(host, p + "/../.."))


def _resolved(host: HostRoot, p: str) -> object:
    """host_resolve(strict): at `/` the round asks the kernel (one open), HostRoot walks the path."""
    try:
        return host.host_resolve(p, strict=True)
    except OSError as exc:
        return type(exc), exc.errno


def _stable_real_paths() -> list[str]:
    """Paths of this machine whose contents do not change from one read to the next: PCI functions'
    attributes (and the optional ones they lack), DMI, kernel settings, network links, and several
    files of directories this machine does not have."""
    paths = ["/proc/sys/kernel/osrelease", "/proc/sys/kernel/pid_max", "/proc/sys/kernel/no-such",
             "/proc/sys/kernel/yama/ptrace_scope", "/sys/devices/system/cpu/online", "/sys/fs/selinux/enforce"]
    pci = "/sys/bus/pci/devices"
    for dev in sorted(os.listdir(pci))[:8] if os.path.isdir(pci) else []:
        for name in ("class", "vendor", "device", "subsystem_vendor", "subsystem_device", "sriov_totalvfs",
                     "iommu_group/type", "iommu/intel-iommu/version", "driver", "numa_node", "no-such"):
            paths.append(f"{pci}/{dev}/{name}")
    for name in ("sys_vendor", "product_name", "bios_date", "board_name", "chassis_type", "no-such"):
        paths.append(f"/sys/devices/virtual/dmi/id/{name}")
    net = "/sys/class/net"
    for iface in sorted(os.listdir(net))[:6] if os.path.isdir(net) else []:
        for name in ("device", "device/vendor", "mtu", "type", "no-such", "device/sriov_totalvfs"):
            paths.append(f"{net}/{iface}/{name}")
    for d in ("/no/such/dir", "/sys/module/no_such_module/parameters", "/proc/sys/no-such"):
        paths += [f"{d}/{n}" for n in ("a", "b", "c", "d")]
    return paths


def test_a_round_at_slash_gives_hostroots_answers_through_held_directories() -> None:
    """At `/` a round opens each file relative to its directory once that directory was asked for twice,
    and answers "missing" for every file of a directory that is not there: the answers are HostRoot's
    whole-path ones, for present and absent files, links (a PCI function's driver) and absent parents,
    each asked twice in one shared round."""
    paths = _stable_real_paths()
    want = {p: _answers(SLASH, p) for p in paths}
    rnd = RoundHost.over(SLASH)
    for p in paths:
        assert _answers(rnd, p) == want[p], p
    for p in paths:
        assert _answers(rnd, p) == want[p], p
    held = rnd._held()
    assert held is not None and held.fds, "directories asked for twice are held"


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "held-directories"])
def test_files_of_a_missing_directory_are_missing_for_the_whole_round(
    tmp_path: Path, openat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a round found a directory absent, its files are absent for the rest of the round (the round
    answers from what it established, as its memo does), and a new round sees what is there now."""
    from nodecompat.probes import root_resolve

    monkeypatch.setattr(root_resolve, "USE_OPENAT2", openat2)
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "plain-vm", root, symlinks=True)
    rnd = RoundHost.over(HostRoot(root))
    asked = [f"x{i}" for i in range(held_parents.FIRST_HOLD_AT)]  # enough for the directory to be looked at
    assert [rnd.read_line(f"/sys/devices/virtual/dmi/nope/{n}") for n in asked] == [None] * len(asked)
    (root / "sys" / "devices" / "virtual" / "dmi" / "nope").mkdir(parents=True)
    for n in ("c", "d"):
        (root / "sys" / "devices" / "virtual" / "dmi" / "nope" / n).write_text(f"{n}\n")
    assert [rnd.read_line(f"/sys/devices/virtual/dmi/nope/{n}") for n in ("c", "d")] == [None, None]
    assert not rnd.exists("/sys/devices/virtual/dmi/nope/c")
    fresh = RoundHost.over(HostRoot(root))
    assert [fresh.read_line(f"/sys/devices/virtual/dmi/nope/{n}") for n in ("c", "d")] == ["c", "d"]


def test_cpuid_registers_are_read_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """As klauspost/cpuid's init() for NFD (cpuid.CPU, read by source/cpu/cpuid_amd64.go and cpu.go), the
    CPUID device is read once per process per leaf: later rounds get the same registers without
    opening /dev/cpu/0/cpuid (an interprocessor call per read)."""
    cpuid = hostcpu.cpuid_reader(SLASH)
    if cpuid is None:
        pytest.skip("/dev/cpu/0/cpuid not readable here")
    first = [cpuid(leaf, 0) for leaf in (0, 1, 7)]
    opened: list[object] = []
    real_open = os.open

    def counting_open(path: object, *args: object, **kw: object) -> int:
        if path == hostcpu.CPUID_DEVICE:
            opened.append(path)
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(hostcpu.os, "open", counting_open)
    again = hostcpu.cpuid_reader(SLASH)
    assert again is not None
    assert [again(leaf, 0) for leaf in (0, 1, 7)] == first
    assert opened == []


def _fifo_with_a_writer(path: Path) -> tuple[int, int]:
    """A FIFO at `path` held open by a writer that already wrote a line (a plain read would get it)."""
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open without blocking
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(writer, b"from-the-fifo\n")
    return reader, writer


@pytest.mark.parametrize("where", ["tmp-root-openat2", "tmp-root-walk", "slash"])
def test_a_round_refuses_fifos_whatever_way_it_opens_them(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO is refused (None, as HostRoot's ENXIO), not read and not waited on: with no writer, with a
    writer that wrote data, opened by whole path and through a held directory (its siblings read first),
    under a host root (openat2 and the descriptor walk) and at `/`. The round reads with pread, which a
    FIFO refuses (ESPIPE); without that check the writer's line would be returned."""
    from nodecompat.probes import root_resolve

    monkeypatch.setattr(root_resolve, "USE_OPENAT2", where != "tmp-root-walk")
    root = tmp_path / "root"
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    for n in ("a", "b", "c"):
        (d / n).write_text(f"{n}\n")
    os.mkfifo(d / "silent")
    fds = _fifo_with_a_writer(d / "talking")
    try:
        host = HostRoot(Path("/")) if where == "slash" else HostRoot(root)
        base = str(d) if where == "slash" else "/sys/d"
        for first in ("silent", "talking"):  # before the directory is held: a whole-path open
            rnd = RoundHost.over(host)
            assert rnd.read_bytes(f"{base}/{first}") is None
            assert rnd.read_line(f"{base}/{first}") is None
            assert [rnd.read_line(f"{base}/{n}") for n in ("a", "b", "c")] == ["a", "b", "c"]
            for name in ("silent", "talking"):  # now through the held directory
                assert rnd.read_bytes(f"{base}/{name}") is None, name
                assert rnd.read_text(f"{base}/{name}") is None, name
        assert host.read_bytes(f"{base}/talking") is None  # HostRoot's answer, for comparison
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 8192, 70_000])
def test_a_round_reads_files_around_its_first_read_size_whole(tmp_path: Path, size: int) -> None:
    """A round's first read asks for a page (bounded_read.FIRST_READ) and a one-byte read finds the end:
    files shorter than, equal to and longer than that page, and longer than a read chunk, read whole."""
    root = tmp_path / "root"
    root.mkdir()
    data = bytes(i % 251 for i in range(size))
    (root / "f").write_bytes(data)
    assert RoundHost.over(HostRoot(root)).read_bytes("/f") == data == HostRoot(root).read_bytes("/f")
    assert RoundHost.over(SLASH).read_bytes(str(root / "f")) == data


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "held-directories"])
def test_a_link_out_of_the_root_as_the_last_name_in_a_held_directory_is_not_followed(
    tmp_path: Path, openat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path of a round's read opens a file by name in a held directory with O_NOFOLLOW: a last
    name that is a link (absolute, or relative climbing past the root) is resolved as the host root's,
    re-rooted, never followed by the kernel from the held directory. Without O_NOFOLLOW there the secret
    outside the root would be read instead of the re-rooted copy."""
    from nodecompat.probes import root_resolve

    monkeypatch.setattr(root_resolve, "USE_OPENAT2", openat2)
    root = tmp_path / "root"
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    for n in ("a", "b", "c"):
        (d / n).write_text(f"{n}\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("SECRET\n")
    rerooted = root / str(outside).lstrip("/")
    rerooted.mkdir(parents=True)
    (rerooted / "secret").write_text("REROOTED\n")
    os.symlink(outside / "secret", d / "abs")  # absolute: means <root>/<outside>/secret
    os.symlink("../" * 12 + str(outside / "secret").lstrip("/"), d / "climb")  # `..` stops at the root
    os.symlink("/proc/self/environ", d / "environ")  # re-rooted: <root>/proc/self/environ, not there
    rnd = RoundHost.over(HostRoot(root))
    # held at its third request in a round without a hint (held_parents.FIRST_HOLD_AT)
    assert [rnd.read_line("/sys/d/a"), rnd.read_line("/sys/d/b"), rnd.read_line("/sys/d/c")] == ["a", "b", "c"]
    held = rnd._held()
    if openat2:
        assert held is not None and held.state["/sys/d"] >= 0, "the directory is held: the fast path is taken"
    assert rnd.read_line("/sys/d/abs") == "REROOTED"
    assert rnd.read_line("/sys/d/climb") == "REROOTED"
    assert rnd.read_bytes("/sys/d/environ") is None
    assert "SECRET" not in repr([rnd.read_bytes("/sys/d/abs"), rnd.read_text("/sys/d/climb")])


def test_a_terminal_is_unreadable_not_an_error_for_the_round() -> None:
    """A terminal has no offsets (pread: ESPIPE), so the round reads it as a stream, O_NONBLOCK: with nothing
    to read that read fails (EAGAIN), and once the other side hangs up it fails again (EIO). HostRoot's
    read_bytes answers None both times; the round gave the OSError to the probe (bounded_read.read_stream
    ran inside _read's `except OSError`, so nothing caught it) and the probe lost every feature it had."""
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        round_host = RoundHost.over(SLASH)
        assert SLASH.read_bytes(path) is None
        assert round_host.read_bytes(path) is None  # EAGAIN: nothing written to the terminal
        assert round_host.read_text(path) is None
        os.close(master)
        master = -1
        assert RoundHost.over(SLASH).read_bytes(path) is None  # EIO: its other side hung up
    finally:
        os.close(slave)
        if master >= 0:
            os.close(master)
