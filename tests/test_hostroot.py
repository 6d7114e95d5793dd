"""Host reads stay inside the host root (issue 8 item 8): chroot-like resolution, features.d confinement.

The reproducer: a features.d entry that is a symlink to /etc/shadow, /proc/self/environ or
../../../../.. published that file's lines through GetFeatures. Here the same trees are built in tmp
dirs and read by the local probe in-process (with a tmp host root and with the host root "/", which
is what a node's systemd unit uses) and by a real `nodecompat serve` process over gRPC.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import grpc
import pytest
from support_daemon import start_daemon
from support_hosts import attrs, run

from nodecompat.hostroot import MAX_SYMLINKS, HostPathEscape, HostRoot
from nodecompat.probes.local import LocalProbe
from nodecompat.probes.round_host import RoundHost
from nodecompat.v1 import features_pb2, node_pb2_grpc

FD = "/etc/kubernetes/node-feature-discovery/features.d"
SECRET = "nodecompat-secret-line"


def _hostile_tree(root: Path, outside: Path) -> Path:
    """A host tree whose features.d holds one honest file and links aiming out of it."""
    fd = root / FD.lstrip("/")
    fd.mkdir(parents=True)
    (fd / "honest").write_text("honest=1\n")
    (outside / "secret").write_text(f"{SECRET}=leaked\n")
    os.symlink("/etc/shadow", fd / "shadow")
    os.symlink("/proc/self/environ", fd / "environ")
    os.symlink("../../../../..", fd / "up")
    os.symlink("../" * 12 + str(outside / "secret").lstrip("/"), fd / "climb")  # relative, above the root
    os.symlink(str(outside / "secret"), fd / "absolute")  # absolute path of a real file outside
    (fd.parent / "inside").write_text("inside=1\n")
    os.symlink("../inside", fd / "sibling")  # stays under the root but leaves features.d
    return fd


def _published(wire: dict) -> str:
    return repr(attrs(wire, "local.feature")) + repr(attrs(wire, "local.label"))


@pytest.mark.parametrize("round_host", [False, True], ids=["hostroot", "probe-round"])
def test_features_d_links_out_are_refused_under_a_tmp_root(tmp_path: Path, round_host: bool) -> None:
    """Through HostRoot and through a probe round's host (directory descriptors held for the round)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    _hostile_tree(root, outside)
    host = HostRoot(root)
    wire, out = run(LocalProbe(), RoundHost.over(host) if round_host else host)
    assert attrs(wire, "local.feature") == {"honest": "1"}
    published = _published(wire)
    assert SECRET not in published and "inside" not in published and "root:" not in published
    notes = "\n".join(out.notes)
    for name in ("sibling", "up"):
        assert f"{FD}/{name} leads outside {FD}" in notes, notes
    # Absolute targets (and climbs above the root) are re-rooted: <root>/etc/shadow, <root>/tmp/...
    # do not exist in this tree, so there is nothing to read.
    for name in ("shadow", "environ", "absolute", "climb"):
        assert f"{FD}/{name}: cannot stat: No such file or directory" in notes, notes


def test_features_d_links_out_are_refused_when_the_root_is_slash(tmp_path: Path) -> None:
    """Host root "/" (a node's systemd unit): /etc/shadow and /proc/self/environ really exist."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    fd = _hostile_tree(root, outside)
    os.environ["NODECOMPAT_TEST_ENV_SECRET"] = SECRET
    try:
        wire, out = run(LocalProbe(), HostRoot(Path("/"), features_d=str(fd)))
    finally:
        del os.environ["NODECOMPAT_TEST_ENV_SECRET"]
    assert attrs(wire, "local.feature") == {"honest": "1"}
    published = _published(wire)
    assert SECRET not in published and "root:" not in published and "PATH" not in published
    notes = "\n".join(out.notes)
    for name in ("shadow", "environ", "up", "climb", "absolute", "sibling"):
        assert f"{fd}/{name} leads outside {fd}" in notes, notes


def test_daemon_does_not_publish_what_features_d_links_point_at(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    fd = _hostile_tree(root, outside)
    (root / "etc" / "shadow").write_text(f"{SECRET}-in-root=x\n")  # what the re-rooted link means
    daemon = start_daemon(tmp_path, "--host-root", str(root), "--probes", "local")
    try:
        with grpc.insecure_channel(daemon.address) as ch:
            resp = node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(), timeout=20)
    finally:
        daemon.terminate()
    feats = dict(resp.features.attributes["local.feature"].elements)
    assert feats == {"honest": "1"}
    status = next(p for p in resp.probes if p.name == "local")
    notes = "\n".join(status.notes)
    assert f"{FD}/shadow leads outside {FD} (to /etc/shadow): not read" in notes
    assert f"{FD}/up leads outside {FD} (to /): not read" in notes
    assert SECRET not in str(resp)
    assert fd.is_dir()


def test_resolution_is_chroot_like(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sys" / "devices" / "pci0000:00" / "0000:00:03.0").mkdir(parents=True)
    (root / "sys" / "devices" / "pci0000:00" / "0000:00:03.0" / "vendor").write_text("0x1af4\n")
    (root / "sys" / "class" / "net").mkdir(parents=True)
    os.symlink("/sys/devices/pci0000:00/0000:00:03.0", root / "sys" / "class" / "net" / "abs")  # re-rooted
    os.symlink("../../devices/pci0000:00/0000:00:03.0", root / "sys" / "class" / "net" / "rel")
    host = HostRoot(root)
    assert host.read_line("/sys/class/net/abs/vendor") == "0x1af4"
    assert host.read_line("/sys/class/net/rel/vendor") == "0x1af4"
    assert host.host_resolve("/sys/class/net/abs") == "/sys/devices/pci0000:00/0000:00:03.0"
    assert host.host_resolve("/../../../sys/./class/../devices") == "/sys/devices"  # ".." stops at the root
    os.symlink("../../../../../../../../sys/devices", root / "sys" / "up")
    assert host.host_resolve("/sys/up") == "/sys/devices"
    assert host.resolve("/sys/up") == Path(os.path.realpath(root)) / "sys" / "devices"
    assert host.link_target_name("/sys/class/net/rel") == "0000:00:03.0"
    assert host.listdir("/sys/class/net/abs") == ["vendor"]
    assert host.is_dir("/sys/class/net/abs") and host.is_file("/sys/class/net/rel/vendor")


def test_loops_and_escape_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    host = HostRoot(root)
    with pytest.raises(OSError) as exc:
        host.resolve("/a", strict=True)
    assert exc.value.errno == errno.ELOOP and str(MAX_SYMLINKS) in str(exc.value)
    assert host.read_text("/a") is None
    (root / "d").mkdir()
    os.symlink("/", root / "d" / "top")
    with pytest.raises(HostPathEscape) as esc:
        host.resolve("/d/top", within="/d")
    assert str(esc.value) == "/d/top leads outside /d (to /): not read"
    assert isinstance(esc.value, OSError)
    assert host.escape_problem("/d/top", within="/d") == str(esc.value)


def test_an_opened_file_outside_the_root_is_refused(tmp_path: Path) -> None:
    """The last line of defence against a swap between resolving and opening: the descriptor's path."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").write_text("x")
    host = HostRoot(root)
    fd = os.open(tmp_path / "elsewhere", os.O_RDONLY)
    try:
        with pytest.raises(HostPathEscape):
            host._check_fd(fd, "/elsewhere", None)
    finally:
        os.close(fd)


def test_fifos_are_not_waited_on_and_reads_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    (root / "big").write_bytes(b"x" * 2048)
    host = HostRoot(root)
    assert host.read_text("/fifo") is None  # O_NONBLOCK open, then refused: no hang
    with pytest.raises(OSError) as exc:
        host.open_bytes("/big", max_bytes=1024)
    assert exc.value.errno == errno.EFBIG
    assert host.open_bytes("/big") == b"x" * 2048


def _entry_answers(host: HostRoot, fd: str, names: list[str]) -> dict[str, tuple[object, object]]:
    """Per features.d entry: stat(within=fd) (its fields, or the exception's type, errno and strerror, what
    the local probe's note says) and read_bytes(within=fd)."""
    out: dict[str, tuple[object, object]] = {}
    for name in names:
        path = f"{fd}/{name}"
        try:
            st = host.stat(path, within=fd)
            got: object = (st.st_mode, st.st_ino, st.st_dev, st.st_size)
        except OSError as exc:
            got = (type(exc), exc.errno, exc.strerror)  # the words a probe's note quotes
        out[name] = (got, host.read_bytes(path, within=fd))
    return out


@pytest.mark.parametrize("at_slash", [False, True], ids=["tmp-root", "root-slash"])
def test_features_d_entries_opened_beneath_answer_as_the_walk(
    tmp_path: Path, at_slash: bool, host_reads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's confined stat and read of a features.d entry (round_paths._beneath: openat2 RESOLVE_BENEATH
    from features.d's descriptor, in C) answer exactly as HostRoot's walk for every kind of entry: a file, a
    link staying inside (relative, absolute, through a sub-directory), links out (absolute, `..`, /proc),
    a dangling link, a loop, a FIFO (not waited on), a directory. With the C helper the entries that stay
    inside are opened beneath (one call each), the others by the walk, which words their refusal."""
    from nodecompat.probes import round_paths

    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    fdir = _hostile_tree(root, outside)
    (fdir / "sub").mkdir()
    (fdir / "sub" / "deep").write_text("deep=1\n")
    os.symlink("sub/deep", fdir / "rel-in")
    os.symlink("sub/../honest", fdir / "dotdot-in")
    os.symlink(f"{FD}/honest" if not at_slash else str(fdir / "honest"), fdir / "abs-in")
    os.symlink("nowhere", fdir / "dangling")
    os.symlink("loop", fdir / "loop")
    os.mkfifo(fdir / "fifo")
    host = HostRoot(Path("/"), features_d=str(fdir)) if at_slash else HostRoot(root)
    within = str(fdir) if at_slash else FD
    names = sorted(os.listdir(fdir))
    opened: list[str] = []
    beneath = round_paths.RootPrimitives._beneath

    def spy(self: round_paths.RootPrimitives, text: str, w: str, flags: int) -> int:
        fd = beneath(self, text, w, flags)
        if fd >= 0:
            opened.append(text.rpartition("/")[2])
        return fd

    monkeypatch.setattr(round_paths.RootPrimitives, "_beneath", spy)
    expected = _entry_answers(host, within, names)
    assert expected["honest"] == (expected["honest"][0], b"honest=1\n")
    assert expected["fifo"][1] is None
    assert _entry_answers(RoundHost.over(host), within, names) == expected
    if host_reads == "c":
        assert sorted(set(opened)) == ["dotdot-in", "fifo", "honest", "rel-in", "sub"]
    else:
        assert opened == []
