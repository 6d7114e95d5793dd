"""A probe round's host operations in C (probes/_hostc.c round_read, stat_fields, listdir, link_name through
probes/host_c.py reader): the same answers, the same round memo and the same recording entries as the Python
path (RoundHost.read_bytes/read_text/read_line, exists/is_dir/is_file, listdir, link_target_name;
RecordingHost noting each), confined to the host root and bounded alike; where the helper is built a round's
reads and their entries are made in one C call, not through Python's read_whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes import bounded_read, host_c, round_host
from nodecompat.probes.probe_memo import RecordingHost
from nodecompat.probes.round_host import RoundHost

needs_c = pytest.mark.skipif(host_c._built is None, reason="the C helper is not built here")


def _tree(tmp_path: Path) -> HostRoot:
    root = tmp_path / "root"
    d = root / "sys" / "d"
    d.mkdir(parents=True)
    (d / "a").write_bytes(b"A\n")
    (d / "crlf").write_bytes(b"one\r\ntwo\rthree\n")
    (d / "blank").write_bytes(b"  \n\t\n")
    (d / "empty").write_bytes(b"")
    (d / "bad").write_bytes(b"\xff\xfe caf\xc3\xa9\n second")
    (d / "big").write_bytes(bytes(range(256)) * 400)  # 100 KiB: past the first page, several chunks
    (d / "over").write_bytes(b"x" * 200_000)
    os.mkfifo(d / "fifo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"SECRET\n")
    rerooted = root / str(outside).lstrip("/")
    rerooted.mkdir(parents=True)
    (rerooted / "secret").write_bytes(b"REROOTED\n")
    os.symlink(outside / "secret", d / "abs")  # absolute: re-rooted inside the root
    os.symlink("../" * 12 + str(outside / "secret").lstrip("/"), d / "climb")  # `..` stops at the root
    os.symlink("/proc/self/environ", d / "environ")  # re-rooted: not there
    os.symlink(outside, d / "outdir")  # a directory link out: re-rooted
    return HostRoot(root)


def _paths(outside: Path) -> list[str]:
    names = ["a", "crlf", "blank", "empty", "bad", "big", "over", "fifo", "abs", "climb", "environ", "missing",
             "outdir/secret", "outdir", "a/", ".", ".."]
    return ([f"/sys/d/{n}" for n in names] + ["/sys/d", "/sys/nothere/x", "/sys/nothere/y", "sys/d/a", "/", "",
            f"{outside}/secret", "/sys/d/../d/a", "/sys/d//abs", "/sys//d/abs/", "sys/d/abs", "abs",
            "/sys/d/."])  # fmt: skip


def _session(host: HostRoot, use_c: bool, paths: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """Every kind of read of every path, twice, on one round's recording host: answers, entries, memo."""
    monkeypatch.setattr(host_c, "USE_C", use_c)
    rh = RoundHost.over(host)
    rec = RecordingHost.of(rh)
    answers = []
    for _ in range(2):
        for p in paths:
            for read in (rec.read_line, rec.read_text, rec.read_bytes, rh.read_line, rh.read_text, rh.read_bytes,
                         rec.exists, rec.is_dir, rec.is_file, rec.listdir, rec.link_target_name, rh.exists,
                         rh.is_dir, rh.is_file, rh.listdir, rh.link_target_name):
                answers.append((p, read.__name__, read(p)))
    assert (rh.c_reader()[0] is not None) == (use_c and host_c._built is not None)
    entries = [(fn, args, answer) for fn, args, answer in rec.log.entries]
    # a stat kept for the round: an os.stat_result (Python) or the C helper's fields, st_mode first in both
    memo = {k: (v if k[0] != "s" else v and v[0]) for k, v in rh.memo.items()}
    return answers, entries, memo


@needs_c
def test_round_reads_in_c_answer_record_and_fill_the_memo_as_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = _tree(tmp_path)
    monkeypatch.setattr(bounded_read, "MAX_READ_BYTES", 150_000)  # "over" is past the bound: None on both paths
    paths = _paths(tmp_path / "outside")
    c = _session(host, True, paths, monkeypatch)
    py = _session(host, False, paths, monkeypatch)
    assert c == py
    got = {(p, kind): v for p, kind, v in c[0]}
    assert got["/sys/d/abs", "read_bytes"] == got["/sys/d/climb", "read_bytes"] == b"REROOTED\n"  # never SECRET
    assert got["/sys/d/outdir/secret", "read_bytes"] == b"REROOTED\n"
    assert got["/sys/d/environ", "read_bytes"] is None and got["/sys/d/fifo", "read_bytes"] is None
    assert got["/sys/d/over", "read_bytes"] is None and len(got["/sys/d/big", "read_bytes"]) == 102400
    assert got["/sys/d/crlf", "read_text"] == "one\ntwo\nthree\n" and got["/sys/d/blank", "read_line"] == ""
    assert got["/sys/d/outdir/secret", "is_file"] and got["/sys/d/outdir", "is_dir"]  # re-rooted: <root>/<outside>
    assert got["/sys/d/abs", "link_target_name"] == "secret" and got["/sys/d", "listdir"][:3] == ["a", "abs", "bad"]
    for use_c in (True, False):  # a NUL: os.open's ValueError on both paths (the C reader hands it back)
        monkeypatch.setattr(host_c, "USE_C", use_c)
        with pytest.raises(ValueError):
            RoundHost.over(host).read_bytes("/sys/d/a\0b")


@needs_c
def test_round_reads_in_c_at_the_host_root_slash_answer_as_python(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ["/proc/cpuinfo", "/proc/sys/kernel/osrelease", "/proc/sys/kernel/ostype", "/etc/os-release",
             "/proc/crypto", "/no/such/dir/x", "/no/such/dir/y", "proc/sys/kernel/osrelease", "/proc/sys/kernel/",
             "/proc/self/exe", "proc/self/exe", "/sys/class/net/lo", "/sys/class/net/lo/",
             "/sys/class/net/lo/subsystem"]
    assert _session(HostRoot(Path("/")), True, paths, monkeypatch) == _session(
        HostRoot(Path("/")), False, paths, monkeypatch)


@needs_c
def test_a_recording_round_reads_and_notes_in_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the helper is built a round's read and its recording entry are one C call: Python's read path
    (read_whole) is not taken, and the entry holds the very bytes the round's memo holds."""
    host = _tree(tmp_path)
    monkeypatch.setattr(host_c, "USE_C", True)

    def no_python_read(fd: int) -> bytes | None:
        raise AssertionError("read through Python's read_whole")

    monkeypatch.setattr(round_host, "read_whole", no_python_read)
    rec = RecordingHost.of(RoundHost.over(host))
    assert rec.read_line("/sys/d/a") == "A" and rec.read_text("/sys/d/crlf") == "one\ntwo\nthree\n"
    assert rec.read_bytes("/sys/d/abs") == b"REROOTED\n" and rec.read_bytes("/sys/d/missing") is None
    assert [(args, answer) for _fn, args, answer in rec.log.entries] == [
        (("/sys/d/a",), b"A\n"), (("/sys/d/crlf",), b"one\r\ntwo\rthree\n"), (("/sys/d/abs",), b"REROOTED\n"),
        (("/sys/d/missing",), None)]  # fmt: skip
    assert rec.log.entries[0][2] is rec.memo["b", "/sys/d/a"]


def _first_line(raw: bytes) -> str:
    """RoundHost.read_line's answer, as the Python path computes it (text_of, then its first line stripped)."""
    text = bounded_read.text_of(raw)
    assert text is not None
    return text.splitlines()[0].strip() if text.strip() else ""


@needs_c
def test_first_lines_in_c_are_pythons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C reader's first line of an ASCII file (found without decoding the rest) is str.splitlines()[0]
    .strip() of text_of(the bytes): every ASCII line break and blank, mixed, and non-ASCII files alike."""
    import random

    rnd = random.Random(11)
    alphabet = [bytes([c]) for c in range(0, 0x21)] + [b"a", b"Z", b"0", b"\x7f", b"\r\n", b"\xc3\xa9", b"\xff"]
    contents = [b"", b"\n", b"x", b" x \n y", b"\n\nx", b"\x1fx\x1f\n", b"\x1c", b"a\x85b", b"\r\r\nx", b"\t \x0b"]
    contents += [b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(12))) for _ in range(400)]
    d = tmp_path / "root" / "sys" / "l"
    d.mkdir(parents=True)
    for i, raw in enumerate(contents):
        (d / str(i)).write_bytes(raw)
    monkeypatch.setattr(host_c, "USE_C", True)
    rh = RoundHost.over(HostRoot(tmp_path / "root"))
    got = [rh.read_line(f"/sys/l/{i}") for i in range(len(contents))]
    assert rh.c_reader()[0] is not None
    assert got == [_first_line(raw) for raw in contents]


def _held_after(host: HostRoot, use_c: bool, hint: frozenset[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The round's held directories after reads asking for directories 1 to 4 times (and a missing one):
    each state (held descriptors as "held") and the directories kept for the next round's hint."""
    monkeypatch.setattr(host_c, "USE_C", use_c)
    rh = RoundHost.over(host, hint)
    for times, parent in enumerate(("/sys/h1", "/sys/h2", "/sys/h3", "/sys/h4", "/sys/gone"), start=1):
        for i in range(times):
            rh.read_line(f"{parent}/f{i}")
    held = rh._parents[0]
    assert held is not None
    return {k: "held" if v >= 0 else v for k, v in held.state.items()}, sorted(held.kept)


@needs_c
@pytest.mark.parametrize("hint", [frozenset(), frozenset({"/sys/h1", "/sys/gone"})])
def test_held_directories_are_counted_in_c_as_lookup_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hint: frozenset[str]
) -> None:
    """The C reader counts a directory not held yet as HeldParents.lookup does (held at the same request,
    the same directories kept for the next round's hint), with and without a hint."""
    for n in range(1, 5):
        d = tmp_path / "root" / "sys" / f"h{n}"
        d.mkdir(parents=True)
        for i in range(n):
            (d / f"f{i}").write_bytes(b"%d\n" % i)
    host = HostRoot(tmp_path / "root")
    c = _held_after(host, True, hint, monkeypatch)
    assert c == _held_after(host, False, hint, monkeypatch)
    assert c[0]["/sys/h4"] == "held" and c[0]["/sys/h1"] == ("held" if hint else -3)


@needs_c
def test_a_round_hosts_reads_are_the_c_reader_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the helper serves a round, a host's read_bytes/read_text/read_line are its Reader (host_c.bind: no
    Python frame per read), a recording view's note each read; keywords and paths that are not str take the
    Python methods; a subclass overriding a read keeps its own; the host holds no reference cycle (collected
    as soon as it is dropped, its descriptors closed then)."""
    import gc

    from nodecompat.probes.probe_memo import _read_bytes, _read_within

    host = _tree(tmp_path)
    monkeypatch.setattr(host_c, "USE_C", True)
    reader = host_c.module().Reader  # type: ignore[union-attr]
    rh = RoundHost.over(host)
    assert rh.read_line("/sys/d/a") == "A" and type(rh.__dict__["read_line"]) is reader
    rec = RecordingHost.of(rh)
    assert all(type(rec.__dict__[n]) is reader for n in host_c.READS)
    assert rec.read_line("/sys/d/a") == "A" and rec.read_text(Path("/sys/d/crlf")) == "one\ntwo\nthree\n"
    assert rec.read_bytes("/sys/d/a", within="/sys/d") == b"A\n" and rec.read_bytes("/sys/d/missing") is None
    assert rec.exists("/sys/d/abs") and rec.is_dir("/sys/d/outdir") and not rec.is_file("/sys/d/outdir")
    assert not rec.exists(Path("/sys/d/missing")) and rec.is_file("/sys/d/a") and rec.is_dir("/sys/d/outdir")
    assert [(fn, args, answer if type(answer) is bool else None) for fn, args, answer in rec.log.entries] == [
        (_read_bytes, ("/sys/d/a",), None), (_read_bytes, ("/sys/d/crlf",), None),
        (_read_within, ("/sys/d/a", "/sys/d"), None), (_read_bytes, ("/sys/d/missing",), None),
        (RoundHost.exists, ("/sys/d/abs",), True), (RoundHost.is_dir, ("/sys/d/outdir",), True),
        (RoundHost.is_file, ("/sys/d/outdir",), False), (RoundHost.exists, ("/sys/d/missing",), False),
        (RoundHost.is_file, ("/sys/d/a",), True), (RoundHost.is_dir, ("/sys/d/outdir",), True)]  # fmt: skip
    rh.read_line("/sys/d/blank")  # not noted: the round host's reader is not the view's
    rh.exists("/sys/d/blank")
    assert len(rec.log.entries) == 10

    counted: list[str] = []

    class Counting(RoundHost):
        def read_text(self, host_path, *, within=None):  # type: ignore[no-untyped-def]
            counted.append(str(host_path))
            return super().read_text(host_path, within=within)

    ch = Counting.over(host)
    assert ch.read_line("/sys/d/a") == "A" and ch.read_text("/sys/d/a") == ch.read_text("/sys/d/a") == "A\n"
    assert counted == ["/sys/d/a", "/sys/d/a"] and "read_text" not in ch.__dict__

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()
    gc.disable()
    try:
        before = open_fds()
        one = RoundHost.over(host)
        view = RecordingHost.of(one)
        for _ in range(4):  # its directory held (descriptors open) from the third read
            view.read_line("/sys/d/a")
            one.read_bytes("/sys/d/big")
        assert open_fds() > before
        del one, view
        assert open_fds() == before  # freed by reference counting alone
    finally:
        gc.enable()
