"""A probe memo's outcome and its replay (probes/probe_memo.py records the log; this decides reuse).

`finish` turns a recording's log into a Memo: the whole reads (RoundHost.read_bytes of a path: most of a
log, ~75% on the fixture trees) compiled into a flat list of (the round memo's key, parent directory,
last name, answer), each path once, and the rest of the log as it was. `replays` compares every entry
with what the round's host answers now: the reads in one tight loop (`replay_reads`), the rest through
their logged functions. Every entry answers for itself (fn(host, *args) == answer), so the order in
which they are compared does not change the decision, only where a changed host stops it.

replay_reads is RoundHost._read's common case written out for a list: a file of a directory the round
holds (held_parents.py; held at its first use when the last round held it) is opened by its one last name
relative to the held descriptor, O_NOFOLLOW under a host root (a link there, ELOOP/ENOTDIR, is read by the
round's whole-path resolution, openat2 RESOLVE_IN_ROOT or the descriptor walk, never followed from the
held directory), and read bounded (bounded_read.read_whole); a directory known missing answers None
without a system call; anything else goes through RoundHost._read itself. The answer is stored in the
round's memo, as RoundHost.read_bytes would, so a probe that runs after a difference, or another probe
reading the same file, gets the same bytes.

Where the C helper is built (probes/host_c.py, probes/_hostc.c) and the round resolves by openat2 or at
`/`, `replay_c` does the same in C: a memo's reads in one call (held directories, whole paths, the
bounded read and the comparison with no Python object per read; the round's memo filled alike), its
stats, listings and link reads by the helper's functions; the rest through their logged functions.
Hand-written: part of the probe memo (no library).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from dataclasses import dataclass, field
from typing import Any

from nodecompat.hostroot import MAX_READ_BYTES
from nodecompat.probes import host_c
from nodecompat.probes.base import ProbeOutput
from nodecompat.probes.bounded_read import read_whole
from nodecompat.probes.held_parents import MISSING
from nodecompat.probes.probe_memo import (
    _ENTRY_BYTES,
    _UNSET,
    MAX_LOG_BYTES,
    Entry,
    Raised,
    _Log,
    _raised,
    _read_bytes,
    _stat_or_none,
)
from nodecompat.probes.root_resolve import OPENAT2_READ, NoOpenat2
from nodecompat.probes.round_host import RoundHost

ReadItem = tuple[tuple[str, str], str | None, str, Any]  # (("b", path), parent or None, last name, answer)


@dataclass
class Memo:
    """A probe's reusable outcome: its log and the output it led to. `reads`: the log's whole reads
    compiled for replay_reads, each path once; `others`: the rest of the log, in order; both made by
    `compile_log` at the memo's first replay (a first round, which only records, does not pay for it)."""

    entries: list[Entry]
    output: ProbeOutput
    size: int  # bytes counted for the bound
    reads: list[ReadItem] = field(default_factory=list)
    others: list[Entry] = field(default_factory=list)
    compiled: bool = False
    # the C helper's form (host_c.py): for the host root `/` (True) or a host root (False), made at need
    c_root: bool | None = None
    c_reads: list[tuple[tuple[str, str], bytes, Any, str | None, bytes]] = field(default_factory=list)
    c_others: list[tuple[int, Any, Any]] = field(default_factory=list)  # others[i] for the C helper (_c_other)


def finish(log: _Log, output: ProbeOutput) -> Memo | None:
    """The memo of a successful, replayable recording, or None (poisoned, or over MAX_LOG_BYTES). An
    operation made twice is compared twice on replay (a few are: a config's identity before and after
    its parse), so two different answers within one round never replay equal."""
    if log.poisoned:
        return None
    entries = log.entries
    c = host_c.module()
    size = c.log_size(entries, _ENTRY_BYTES) if c is not None else _size(entries)  # the same sum, C: no bytecode
    if size > MAX_LOG_BYTES:
        return None
    return Memo(entries, output, size)


def _size(entries: list[Entry]) -> int:
    """A log's size in bytes for MAX_LOG_BYTES (finish; _hostc.log_size computes the same in C)."""
    size = _ENTRY_BYTES * len(entries)
    for _fn, args, answer in entries:  # measured: faster than comprehensions or filters over the entries
        kind = type(answer)
        if kind is bytes or kind is str:
            size += len(answer)
        elif kind is list:
            size += 8 * len(answer) + sum(map(len, answer))
        elif len(args) > 2 and type(args[2]) is bytes:
            size += len(args[2])  # bytes kept in the operation (memo_derived: those a value came from)
    return size


def compile_log(memo: Memo) -> None:
    """Split the memo's log into its compiled reads and the rest (once; a read logged twice with the same
    answer object, the round's memo having served it, is compared once)."""
    reads: list[ReadItem] = []
    others: list[Entry] = []
    seen: dict[str, Any] = {}
    for entry in memo.entries:
        fn, args, answer = entry
        if fn is not _read_bytes or type(answer) is Raised:
            others.append(entry)  # a read that raised is compared as it was logged (its exception)
            continue
        path = args[0]
        if seen.get(path, _UNSET) is answer:
            continue
        seen[path] = answer
        parent, _, name = path.rpartition("/")
        plain = parent and name and name != "." and name != ".." and path[0] == "/"  # held_parents.split's rule
        reads.append((("b", path), parent if plain else None, name, answer))
    memo.reads, memo.others, memo.compiled = reads, others, True


def replay_reads(host: RoundHost, items: list[ReadItem]) -> bool:
    """Whether every read of `items` gives its answer on `host` now (stops at the first difference); each
    read done once per round (the round's memo, filled as RoundHost.read_bytes fills it)."""
    mem: dict[Any, Any] = host.memo
    held = host._parents[0] if host._parents else host._held()
    state = held.state if held is not None else None
    follow_root = held is not None and held.root_fd is not None  # under a host root: links not followed here
    try:
        for key, parent, name, answer in items:
            got = mem.get(key, _UNSET)
            if got is _UNSET:
                d = -2
                if state is not None and parent is not None:
                    d = state.get(parent, -2)
                    if d < 0 and d != MISSING:
                        d = held.lookup(parent)  # type: ignore[union-attr]  # counted; held when due (hint)
                if d >= 0:
                    try:
                        fd = os.open(name, held.file_flags, dir_fd=d)  # type: ignore[union-attr]
                    except OSError as exc:
                        if follow_root and (exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR):
                            got = host._read_path(key[1], None)  # a link: the whole path, resolved in the root
                        else:
                            got = None  # missing, unreadable: as HostRoot's read
                    else:
                        got = read_whole(fd)
                elif d == MISSING:
                    got = None
                else:  # not held (asked for once so far), or no held directories: the whole path
                    got = host._read_path(key[1], None)
                mem[key] = got
            if got is not answer and got != answer:
                return False
    except Exception:
        return False  # not as logged (a logged read that raised is compared with the others, as logged)
    return True


_c_path = host_c.c_path  # `path` as the round opens it in C


# what the C helper does for an entry of `others`: (kind, its arguments, the round memo's key)
_PY, _STAT, _EXISTS, _IS_DIR, _IS_FILE, _LINK, _LIST, _NONE = range(8)
_STAT_KINDS = {RoundHost.exists: _EXISTS, RoundHost.is_dir: _IS_DIR, RoundHost.is_file: _IS_FILE}


def _c_other(fn: Any, args: tuple[Any, ...], at_root: bool) -> tuple[int, Any, Any]:
    """An entry of `others` in the C helper's form: (_PY, None, None) for the logged function itself."""
    path = args[0] if args and type(args[0]) is str else None
    if path is None or "\0" in path:
        return _PY, None, None
    if fn is _stat_or_none:
        return _STAT, _c_path(path, at_root), None
    if fn in _STAT_KINDS:
        return _STAT_KINDS[fn], _c_path(path, at_root), ("s", path)
    if fn is RoundHost.listdir:
        return _LIST, _c_path(path, at_root), ("l", path)
    if fn is RoundHost.link_target_name:  # RoundHost._link_target_name's parent and name
        text = path.rstrip("/")
        if at_root:
            text = text if text.startswith("/") else "/" + text
        parent, _, name = text.rpartition("/")
        if not name or name in (".", ".."):
            return _NONE, None, None
        return _LINK, (os.fsencode(parent.rstrip("/") or "/"), os.fsencode(name)), ("k", path)
    return _PY, None, None


def compile_c(memo: Memo, at_root: bool) -> bool:
    """The memo's log in the C helper's form (once per kind of root); False when a read's path cannot
    take it (the Python replay decides)."""
    if memo.c_root is not at_root:
        c_reads = []
        for key, _parent, _name, answer in memo.reads:
            raw = _c_path(key[1], at_root)
            if raw is None:
                return False
            c_reads.append((key, raw, answer, _parent, os.fsencode(_name) if _parent is not None else b""))
        memo.c_reads = c_reads
        memo.c_others = [_c_other(fn, args, at_root) for fn, args, _ in memo.others]
        memo.c_root = at_root
    return True


def replay_c(memo: Memo, host: RoundHost, c: Any, dirfd: int) -> bool:
    """replays() through the C helper: the reads in one call (c.replay_reads), stats, listings and link
    reads by its functions (the round's memo first, as RoundHost), the rest through their logged
    functions."""
    mem = host.memo
    if memo.c_reads:
        held = host._parents[0] if host._parents else host._held()
        state, lookup, flags = (held.state, held.lookup, held.file_flags) if held is not None else (None, None, 0)
        link_whole = held is not None and held.root_fd is not None  # under a host root: links not followed
        at = c.replay_reads(dirfd, OPENAT2_READ, mem, memo.c_reads, MAX_READ_BYTES, state, lookup, flags, link_whole)
        if at >= 0:
            if memo.c_reads[at][0] in mem:
                return False  # a difference (what the round read is in its memo, as RoundHost's read)
            if not replay_reads(host, memo.reads[at:]):  # openat2 kept racing a rename: the Python way
                return False
    for (fn, args, answer), (kind, arg, key) in zip(memo.others, memo.c_others, strict=True):
        try:
            if kind == _PY or (key is not None and key in mem):
                got = fn(host, *args)
            elif kind == _STAT:
                got = c.stat_fields(dirfd, arg)
            elif kind == _LIST:
                got = host_c.listing(mem, key, c, dirfd, arg, OPENAT2_READ)  # past the bound: a Raised, below
            elif kind == _LINK:
                got = mem[key] = c.link_name(dirfd, arg[0], arg[1])
            elif kind == _NONE:
                got = None
            else:
                st = c.stat_fields(dirfd, arg)
                got = st is not None and (kind == _EXISTS or stat_mod.S_IFMT(st[0]) == _S_IF[kind])
        except NoOpenat2:
            got = fn(host, *args)
        except Exception as exc:
            got = _raised(exc)
        if got is not answer and got != answer:
            return False
    return True


_S_IF = {_IS_DIR: stat_mod.S_IFDIR, _IS_FILE: stat_mod.S_IFREG}


ReplayContext = tuple[Any, int | None]  # (the C helper module or None, dirfd_of the round's host or None)


def replay_context(host: RoundHost) -> ReplayContext:
    """What every replay of one round's host asks first: the C helper (host_c.module) and, with it, the
    round's root descriptor (host_c.dirfd_of: -1 at `/`, None where the C helper cannot serve the round).
    The same for the whole round (its root table is the round's, opened once), so a runner asks once per
    round instead of once per probe (issue 11: ~8 us each under a host root, 16 memoizable probes)."""
    c = host_c.module()
    return c, (host_c.dirfd_of(host) if c is not None else None)


def replays(memo: Memo, host: RoundHost, context: ReplayContext | None = None) -> bool:
    """Whether every operation of the memo's log answers the same on `host` (stops at the first
    difference): the whole reads through replay_reads, the rest through their logged functions; through
    the C helper where it is built and the round resolves by openat2 or at `/` (probes/host_c.py).
    context: replay_context(host), when the caller made it for the round (else made here)."""
    if not memo.compiled:
        compile_log(memo)
    c, dirfd = replay_context(host) if context is None else context
    if c is not None and dirfd is not None and compile_c(memo, dirfd < 0):
        try:
            return replay_c(memo, host, c, dirfd)
        except Exception:
            return False  # not as logged (as replay_reads)
    if memo.reads and not replay_reads(host, memo.reads):
        return False
    for fn, args, answer in memo.others:
        try:
            got = fn(host, *args)
        except Exception as exc:
            got = _raised(exc)
        if got is not answer and got != answer:
            return False
    return True
