"""The probe round's C helper (probes/_hostc.c, built by setup.py as nodecompat.probes._hostc), if built.

Hand-written in C because Python has no openat2(2) binding: a round resolves every host path inside the
host root with openat2(root descriptor, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), which Python can
only reach through ctypes (~5 us a call for a ~1 us system call). The module makes that call, the round's
bounded read (bounded_read.read_whole's answers) and a steady round's batch replay of a probe's logged
reads (memo_replay.replay_reads: every system call in C, no Python object per read), releasing the GIL
around each system call so the runner's watchdog still abandons a worker stuck in a read.

The extension is optional (setup.py: optional=True): where it was not built (no compiler), `module()` is
None and the rounds take the ctypes/Python path, which gives the same answers (tests run both:
tests/test_probe_c_helper.py and the fixtures forcing the fallback with USE_C = False).

module() -> the extension module or None; dirfd_of(host) -> the descriptor its functions resolve in
for a round's host: the host root's O_PATH descriptor under a host root when openat2 works there, -1 at
the host root `/` (open(2): the kernel resolves as chroot there), None when the round must walk
descriptors instead (no openat2: kernels before 5.6, a seccomp filter); reader(host) -> the round's reads
in C for that host (RoundHost.read_bytes/read_text/read_line, and a recording's entry noted in the same
call: probes/probe_memo.py), or None; bind(host, ...) -> those methods of one host bound to it (no Python
frame per read); listing(memo, key, c, dirfd, raw, flags) -> a bounded listing in C.
"""

from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

from nodecompat import hostroot

try:
    from nodecompat.probes import _hostc as _imported
except ImportError:  # not built (no compiler when installed): the ctypes path
    _imported = None  # type: ignore[assignment, unused-ignore]

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("_hostc.c")  # beside this module in a source tree (an editable install)


def _fresh(built: ModuleType | None, source: Path) -> ModuleType | None:
    """`built` when it was compiled from `source` (setup.py writes the source's CRC-32 into the module as
    SOURCE_CRC32) or when there is no source there (a wheel); else None, logged. An editable install keeps
    the module of its last `pip install -e .`: after a pull that changed _hostc.c its functions take other
    arguments, and each round's replay would fail inside memo_replay.replays' `except` (every probe run
    again, nothing said), so the ctypes path is used until it is rebuilt."""
    if built is None:
        return None
    try:
        text = source.read_bytes()
    except OSError:
        return built
    if getattr(built, "SOURCE_CRC32", None) == f"{zlib.crc32(text):08x}":
        return built
    log.warning("nodecompat.probes._hostc was built from another %s than the one there now: not used (the "
                "probe rounds take the ctypes path); run `make install` to rebuild it", source)
    return None


_built = _fresh(_imported, SOURCE)

USE_C = True  # tests turn it off to exercise the ctypes/Python fallback


def module() -> ModuleType | None:
    """The C helper when built and in use, else None."""
    return _built if USE_C else None


def dirfd_of(host: Any) -> int | None:
    """For a RoundHost: -1 at the host root `/`, the root descriptor under a host root where openat2
    resolves (root_resolve.openat2_ready), else None (the descriptor walk decides: not for C; also when the
    host root itself cannot be opened)."""
    if host._real_root == "/":
        return -1
    from nodecompat.probes.root_resolve import openat2_ready

    try:
        table = host._dirs()
    except OSError:  # the host root cannot be opened (not there, its mount gone): the Python replay answers,
        return None  # as the round's reads do (each read None), never an exception out of replays()
    if table is None or not openat2_ready():
        return None
    fd: int = table.root[1]
    return fd


def reader(host: Any) -> list[Any]:
    """For a RoundHost: [`_hostc.round_read` bound to the round's context (a callable (memo, path, kind,
    entries) -> bytes | str | None, or NotImplemented where the Python path answers), the module, the
    descriptor its functions resolve in (dirfd_of), the round's held directories (HeldParents.state)], or
    [None] where the round's host operations take the Python path (no C helper, no openat2 under a host
    root: the descriptor walk)."""
    c = module()
    if c is None:
        return [None]
    dirfd = dirfd_of(host)
    if dirfd is None:
        return [None]
    held = host._parents[0] if host._parents else host._held()
    if held is None or (dirfd >= 0 and not host._open2):
        return [None]
    if not _fixed:
        import functools

        from nodecompat.probes import held_parents
        from nodecompat.probes.probe_memo import _read_bytes
        from nodecompat.probes.root_resolve import OPENAT2_READ

        # _hostc.c's HELD_FIRST and HELD_HOLD_AT: the counting it does for HeldParents.lookup
        if (held_parents._FIRST, held_parents.HOLD_AT, held_parents.MISSING, held_parents.SLOW) != (-3, 2, -1, -2):
            raise RuntimeError("probes/_hostc.c counts held directories with other constants than held_parents.py")
        _fixed[:] = [functools.partial, OPENAT2_READ, _read_bytes]
    from nodecompat.probes import bounded_read  # its bound as it is now (tests lower it)

    partial, flags, read_bytes = _fixed
    link_whole = held.root_fd is not None  # under a host root: a link in a held directory is not followed
    # the round's held directories: the C helper counts a directory not held yet as HeldParents.lookup does
    # (its constants checked once in _fixed) and calls lookup where that decides more (the hold itself)
    ctx = (dirfd, flags, held.state, held.lookup, held.file_flags, link_whole, bounded_read.MAX_READ_BYTES,
           read_bytes, held.hint, held.kept, held.hold_at)
    return [partial(c.round_read, ctx), c, dirfd, held.state, ctx]


READS = ("read_bytes", "read_text", "read_line", "exists", "is_dir", "is_file", "link_target_name")  # kinds 0-6


def bind(host: Any, cr: list[Any], log: Any, base: type) -> None:
    """Put the C helper's Reader for host's read_bytes / read_text / read_line / exists / is_dir / is_file /
    link_target_name in host.__dict__ (one C call, _hostc.bind), so a probe's call is round_read (round_stat,
    round_link) itself, with no Python frame (the reader hands what it does not answer to base's own method: a
    keyword, a path that is not a str, what round_read gives back as NotImplemented). cr: reader(host) (its C
    reader in use); log: a recording's probe_memo._Log whose entries each call notes (None for a round host);
    base: the class whose methods the readers stand for (RoundHost or RecordingHost). A subclass overriding
    one of them (a test counting its reads) keeps its own method for that one."""
    kind_type = type(host)
    funcs = _plans.get((kind_type, base))
    if funcs is None:
        funcs = _plans[kind_type, base] = tuple(
            f if getattr(kind_type, name) is f else None for f, name in ((getattr(base, n), n) for n in READS))
    if not _notes:
        from nodecompat.probes.round_host import RoundHost

        # a stat's entry in a recording: the function a replay calls (probe_memo._exists, _is_dir, _is_file)
        _notes.append((None, None, None, RoundHost.exists, RoundHost.is_dir, RoundHost.is_file,
                       RoundHost.link_target_name))
    cr[1].bind(host.__dict__, cr[4], host.memo, log, funcs, host, _notes[0])


_plans: dict[tuple[type, type], tuple[Any, ...]] = {}  # (host class, base) -> bind's functions (None: overridden)
_notes: list[tuple[Any, ...]] = []  # [bind's notes], made at its first call
_fixed: list[Any] = []  # functools.partial, root_resolve.OPENAT2_READ, probe_memo._read_bytes (imported once)


def c_path(path: str, at_root: bool) -> bytes | None:
    """`path` as the round opens it: at `/` as given (made absolute), under a host root without its
    trailing "/" (root_resolve.open_in_root_errno); None for a path the C helper cannot take (a NUL)."""
    if "\0" in path:
        return None
    text = (path if path.startswith("/") else "/" + path) if at_root else (path.rstrip("/") or "/")
    return os.fsencode(text)


def listing(memo: dict[Any, Any], key: tuple[str, str], c: ModuleType, dirfd: int, raw: bytes, flags: int) -> list[str]:
    """The C helper's listing of host directory key[1] (`raw`: c_path of it; flags: root_resolve.OPENAT2_READ)
    stored in the round's memo at `key` as RoundHost.listdir stores it: the sorted names ([] when it cannot
    be opened or read), or hostroot.ListingTooLarge, stored and raised, past hostroot.MAX_LIST_ENTRIES /
    MAX_LIST_BYTES (read now: tests lower them; the C helper stops reading at the bound, never holding more).
    NoOpenat2 when openat2 kept racing a rename (nothing stored)."""
    entries, limit = hostroot.MAX_LIST_ENTRIES, hostroot.MAX_LIST_BYTES
    got = c.listdir(dirfd, raw, flags, entries, limit)
    if type(got) is int:  # 1: more entries than the bound, 2: more bytes of names
        exc = hostroot.ListingTooLarge(key[1], f"{entries} entries" if got == 1 else f"{limit} bytes of names")
        memo[key] = exc
        raise exc
    names: list[str] = got or []
    memo[key] = names
    return names
