"""The probe rounds' C helper (probes/_hostc.c through probes/host_c.py): built where a compiler is, its
reads confined to the host root and bounded exactly as the Python path's, and a steady round never reuses
a result when a published input changed (both paths, conftest.py host_reads)."""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

import pytest

from nodecompat.hostroot import MAX_READ_BYTES, HostRoot
from nodecompat.probes import host_c
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.bounded_read import read_whole
from nodecompat.probes.root_resolve import OPENAT2_READ
from nodecompat.probes.runner import ProbeRunner

C = host_c._built
needs_c = pytest.mark.skipif(C is None, reason="the C helper is not built here")


def test_the_c_helper_is_built_where_a_compiler_is() -> None:
    """`pip install -e .` builds it (setup.py, optional only for boxes without a compiler): with gcc and
    Python.h here, a missing module means the build broke silently and every C test would be skipped."""
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("gcc") is None or not header.exists():
        pytest.skip("no compiler or no Python.h: the ctypes path is the one installed")
    assert C is not None, "nodecompat.probes._hostc was not built: run `make install`"


def test_the_c_helper_in_use_is_built_from_this_source() -> None:
    """An editable install keeps the module built from the probes/_hostc.c of its `pip install -e .`: after
    a pull or rebase that changed the C file it was loaded as it was, its functions taking other arguments,
    and every steady round's replay failed inside replays()' `except Exception` (measured on h100-server:
    2 of 16 probes reused a round instead of 16, nothing logged). It is used only when built from the
    source beside it (setup.py writes the source's CRC-32 into it)."""
    if host_c._imported is None:
        pytest.skip("the C helper is not built here")
    assert host_c.SOURCE.exists(), "probes/_hostc.c is beside host_c.py in this source tree"
    assert C is host_c._imported, "nodecompat.probes._hostc was built from another probes/_hostc.c: run `make install`"


def test_a_helper_built_from_another_source_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """host_c takes the built module only with the source it was built from (else the ctypes path, said
    in the log); where no source is beside it (a wheel) the build is trusted."""
    built = host_c._imported
    if built is None or not host_c.SOURCE.exists():
        pytest.skip("the C helper is not built here")
    changed = tmp_path / "_hostc.c"
    changed.write_bytes(host_c.SOURCE.read_bytes() + b"/* changed after the build */\n")
    with caplog.at_level("WARNING", logger="nodecompat.probes.host_c"):
        assert host_c._fresh(built, changed) is None
    assert "make install" in caplog.text
    assert host_c._fresh(built, tmp_path / "absent.c") is built
    assert host_c._fresh(built, host_c.SOURCE) is host_c._built  # this source: used (when fresh)


def _root(tmp_path: Path) -> tuple[Path, Path, int]:
    root = tmp_path / "root"
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    (d / "a").write_bytes(b"A\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"SECRET\n")
    (outside / "only-outside").write_bytes(b"SECRET\n")
    rerooted = root / str(outside).lstrip("/")
    rerooted.mkdir(parents=True)
    (rerooted / "secret").write_bytes(b"REROOTED\n")
    os.symlink(outside / "secret", d / "abs")  # absolute: means <root>/<outside>/secret
    os.symlink("../" * 12 + str(outside / "secret").lstrip("/"), d / "climb")  # `..` stops at the root
    os.symlink("/proc/self/environ", d / "environ")  # re-rooted: <root>/proc/self/environ, not there
    os.symlink(outside, d / "outdir")  # a directory link out: re-rooted, <root>/<outside>
    return root, outside, os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _replay(dirfd: int, flags: int, memo: dict[object, object], items: list[tuple[object, bytes, object]],
            bound: int) -> int:  # fmt: skip
    """C.replay_reads of (key, path, answer) items by whole paths (no held directories)."""
    assert C is not None
    return C.replay_reads(dirfd, flags, memo, [(*i, None, b"") for i in items], bound, None, None, 0, False)


def _read(fd: int) -> bytes | None:
    assert C is not None
    return C.read_whole(fd, MAX_READ_BYTES) if fd >= 0 else None


@needs_c
def test_c_opens_and_stats_follow_no_link_out_of_the_root(tmp_path: Path) -> None:
    """openat2 RESOLVE_IN_ROOT in C: an absolute link, a `..` climb and a directory link are re-rooted,
    /proc's magic links refused, for opens, stats, listings and link reads; the batch replay reads the
    same (the secret never)."""
    assert C is not None
    root, outside, rfd = _root(tmp_path)
    try:
        got = {n: _read(C.open_text(rfd, OPENAT2_READ, f"/sys/d/{n}")) for n in ("a", "abs", "climb", "environ")}
        got["outdir"] = _read(C.open_text(rfd, OPENAT2_READ, "/sys/d/outdir/secret"))
        assert got == {"a": b"A\n", "abs": b"REROOTED\n", "climb": b"REROOTED\n", "environ": None,
                       "outdir": b"REROOTED\n"}  # fmt: skip
        st = C.stat_fields(rfd, b"/sys/d/abs")
        inside = os.stat(root / str(outside).lstrip("/") / "secret")
        assert st is not None and st[1] == inside.st_ino != os.stat(outside / "secret").st_ino
        assert C.stat_fields(rfd, b"/sys/d/environ") is None
        assert C.listdir(rfd, b"/sys/d/outdir", OPENAT2_READ, 99, 999) == ["secret"]  # <root>/<outside>, not <outside>
        assert C.listdir(rfd, b"/sys/d", OPENAT2_READ, 99, 999) == sorted(os.listdir(root / "sys" / "d"))
        assert C.listdir(rfd, b"/sys/d/environ", OPENAT2_READ, 99, 999) is None
        assert C.link_name(rfd, b"/sys/d", b"abs") == "secret" and C.link_name(rfd, b"/sys/d", b"a") is None
        assert C.link_name(rfd, b"/sys/d/outdir", b"secret") is None  # a file of the re-rooted directory
        memo: dict[object, object] = {}
        items = [(("b", f"/sys/d/{n}"), f"/sys/d/{n}".encode(), b"SECRET\n") for n in ("abs", "climb")]
        assert _replay(rfd, OPENAT2_READ, memo, items, MAX_READ_BYTES) == 0
        assert memo == {("b", "/sys/d/abs"): b"REROOTED\n"}  # the difference, as read inside the root
    finally:
        os.close(rfd)


@needs_c
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 65536, 65537, 200_000])
def test_c_reads_answer_as_read_whole_and_stop_at_the_bound(tmp_path: Path, size: int) -> None:
    """The C read gives bounded_read.read_whole's answer; a file one byte over the bound is None in both
    (never more than bound + 1 bytes read), one at the bound is read whole; the batch replay likewise."""
    assert C is not None
    f = tmp_path / "f"
    f.write_bytes(bytes(i % 251 for i in range(size)))
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    assert C.read_whole(os.open(f, flags), MAX_READ_BYTES) == read_whole(os.open(f, flags)) == f.read_bytes()
    for bound, want in ((size, f.read_bytes()), (size - 1, None)):
        if bound < 0:
            continue
        assert C.read_whole(os.open(f, flags), bound) == want
        memo: dict[object, object] = {}
        item = (("b", str(f)), os.fsencode(f), f.read_bytes())
        assert _replay(-1, flags, memo, [item], bound) == (-1 if want is not None else 0)
        assert memo[("b", str(f))] == want


@needs_c
def test_c_reads_refuse_fifos_and_read_proc_as_python(tmp_path: Path) -> None:
    """A FIFO is refused without waiting for a writer (None, as read_whole); procfs and sysfs files read
    as the Python path reads them; a directory is unreadable (None)."""
    assert C is not None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
    assert C.read_whole(os.open(fifo, flags), MAX_READ_BYTES) is None
    assert C.read_whole(os.open(tmp_path, flags), MAX_READ_BYTES) is None
    for path in ("/proc/sys/kernel/ostype", "/proc/version", "/sys/kernel/mm/transparent_hugepage/enabled"):
        if os.path.exists(path):
            assert C.read_whole(os.open(path, flags), MAX_READ_BYTES) == read_whole(os.open(path, flags)), path


@needs_c
def test_replay_reads_stops_at_the_first_difference_and_fills_the_memo(tmp_path: Path) -> None:
    """Equal reads put the logged answer (the same object) in the round's memo; the first difference is
    returned with what was read in the memo; an answer already in the memo is compared without a read."""
    assert C is not None
    root, _, rfd = _root(tmp_path)
    try:
        a, missing, b = b"A\n", None, b"old\n"
        (root / "sys" / "d" / "b").write_bytes(b"new\n")
        items = [(("b", "/sys/d/a"), b"/sys/d/a", a), (("b", "/sys/d/none"), b"/sys/d/none", missing),
                 (("b", "/sys/d/b"), b"/sys/d/b", b), (("b", "/sys/d/a/x"), b"/sys/d/a/x", None)]  # fmt: skip
        memo: dict[object, object] = {}
        assert _replay(rfd, OPENAT2_READ, memo, items, MAX_READ_BYTES) == 2
        assert memo[("b", "/sys/d/a")] is a and memo[("b", "/sys/d/none")] is None
        assert memo[("b", "/sys/d/b")] == b"new\n"
        memo[("b", "/sys/d/b")] = b"old\n"  # what another probe read this round: compared, not read again
        assert _replay(rfd, OPENAT2_READ, memo, items, MAX_READ_BYTES) == -1
    finally:
        os.close(rfd)


class Reads(Probe):
    """Reads <prefix>/sys/d/a and stats <prefix>/sys/d/b; publishes both."""

    name = "reads"
    memoizable = True
    features = (FeatureInfo("reads.files", frozenset({"attribute"})),)

    def __init__(self, prefix: str) -> None:
        self.calls = 0
        self.prefix = prefix

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.calls += 1
        out = ProbeOutput()
        st = host.stat_or_none(self.prefix + "/sys/d/b")  # type: ignore[attr-defined]
        a = host.read_bytes(self.prefix + "/sys/d/a")
        out.features.add_attributes("reads.files", {"a": repr(a), "b": str(st.st_size if st else None)})
        return out


@pytest.mark.parametrize("at_root", [False, True], ids=["host-root", "slash"])
def test_a_published_input_changed_in_place_is_seen_by_the_next_round(
    tmp_path: Path, host_reads: str, at_root: bool
) -> None:
    """Same size, same mtime, other bytes: the replay compares the bytes, so the probe runs again and
    publishes the new value (C and fallback, under a host root and at `/`); a stat's change likewise."""
    root, _, rfd = _root(tmp_path)
    os.close(rfd)
    (root / "sys" / "d" / "b").write_bytes(b"12")
    probe = Reads(str(root) if at_root else "")
    runner = ProbeRunner([probe], HostRoot(Path("/") if at_root else root))
    try:
        r1, r2 = runner.run(), runner.run()
        a = root / "sys" / "d" / "a"
        st = a.stat()
        a.write_bytes(b"B\n")
        os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
        r3, r4 = runner.run(), runner.run()
        (root / "sys" / "d" / "b").write_bytes(b"123")
        r5 = runner.run()
    finally:
        runner.close()
    files = [r.features.attributes["reads.files"].elements for r in (r1, r3, r5)]
    assert r2.statuses[0].reused and not r3.statuses[0].reused and r4.statuses[0].reused
    assert files[0] == {"a": repr(b"A\n"), "b": "2"} and files[1] == {"a": repr(b"B\n"), "b": "2"}
    assert not r5.statuses[0].reused and files[2]["b"] == "3"
    assert probe.calls == 3
