"""Parses of host files kept between probe rounds while the file is unchanged (same identity), and
within one round (`per_round`).

A file's identity is (device, inode, size, mtime in ns) from one stat(): a kernel config does not
change while the kernel runs, but parsing its ~7,000 lines is most of a kernel probe's round, so
the parse is reused until the file is replaced or rewritten. Bounded: at most MAX_ENTRIES files, only
files of at most MAX_KEPT_FILE_BYTES, and MAX_KEPT_BYTES of files in all (their sizes: a parse's objects
are a few times its file's bytes; a host root's file may be up to the 32 MiB read bound, real ones are
~0.3 MB: a kernel config, ~1.4 MB: pci.ids).
Hand-written (functools.lru_cache cannot key on a stat result taken at call time).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, TypeVar

from nodecompat.hostroot import HostRoot
from nodecompat.probes.probe_memo import RecordingHost, parsed_identity
from nodecompat.probes.probe_memo import per_round as memo_per_round
from nodecompat.probes.round_host import RoundHost

T = TypeVar("T")
MAX_ENTRIES = 32
MAX_KEPT_FILE_BYTES = 4 << 20  # a larger file is parsed every time it is asked for, never kept
MAX_KEPT_BYTES = 16 << 20  # the kept parses' files together (st_size); the oldest go first

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str], tuple[tuple[int, int, int, int], object]] = OrderedDict()


def identity(host: HostRoot, host_path: str) -> tuple[int, int, int, int] | None:
    """(st_dev, st_ino, st_size, st_mtime_ns) of a regular host file, or None when it is not one."""
    return identity_of(stat_result(host, host_path))


def stat_result(host: HostRoot, host_path: str) -> os.stat_result | None:
    """The host file's stat, resolved inside the host root as a read is (the round's stat on a round's
    host: a missing file costs no OSError), or None when it cannot be stat'ed (missing, unreachable): a
    read of it would find nothing either."""
    if isinstance(host, RoundHost):
        try:
            return host.stat_or_none(host_path)
        except ValueError:
            return None
    try:
        return host.stat(host_path)
    except (OSError, ValueError):
        return None


def identity_of(st: os.stat_result | None) -> tuple[int, int, int, int] | None:
    """identity() from a stat result: None unless it is a regular file's."""
    if st is None or (st.st_mode & 0o170000) != 0o100000:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def parsed(host: HostRoot, host_path: str, kind: str, parse: Callable[[], T],
           ident: tuple[int, int, int, int] | Literal[False] | None = False) -> T:
    """`parse()` of the file at `host_path`, reused while the file's identity is unchanged.

    `kind` names the parse (two parsers of one file do not share an entry). The result is shared
    between rounds: callers must not change it. On a probe's recording host (probes/probe_memo.py)
    the identity is logged and the parse's own reads are not: a replay decides on the identity, as
    this cache does. `ident`: identity(host, host_path) when the caller has just taken it on this same
    host (kernel.kconfig checks each candidate's), so the file is not stat'ed twice for one lookup; False
    (the default): taken here."""
    if ident is False:
        ident = identity(host, host_path)
    # the root and the host path as given (its leading "/" dropped, as HostRoot.path does): building the
    # lexical Path (host.path, pathlib) cost ~10 us a call, four calls a first round. Two spellings of one
    # file are two entries, each checked against the file's identity.
    key = (os.fspath(host.root), os.fspath(host_path).lstrip("/"), kind)
    if ident is not None:
        with _lock:
            hit = _cache.get(key)
            if hit is not None and hit[0] == ident:
                _cache.move_to_end(key)
                return hit[1]  # type: ignore[return-value]
    if ident is not None and isinstance(host, RecordingHost):  # the identity stands for the file (probe_memo)
        value = parsed_identity(host, ident, parse, lambda: identity(host, host_path))
    else:
        value = parse()
    if ident is not None and ident[2] <= MAX_KEPT_FILE_BYTES and identity(host, host_path) == ident:
        with _lock:  # unchanged while we parsed it: kept
            _cache[key] = (ident, value)
            _cache.move_to_end(key)
            kept = sum(entry[0][2] for entry in _cache.values())
            while len(_cache) > MAX_ENTRIES or kept > MAX_KEPT_BYTES:
                kept -= _cache.popitem(last=False)[1][0][2]
    return value


def per_round(host: HostRoot, key: str, compute: Callable[[], T]) -> T:
    """compute(), once per probe round when `host` is the round's host (probes/round_host.py): what
    several probes derive from the same files (cpuinfo's first processor, the PCI functions) is derived
    once, as the files themselves are read once. The result is shared by the round's probes: callers
    must not change it. On any other HostRoot (a probe run alone, a recording host) compute() is called."""
    if not isinstance(host, RoundHost):
        return compute()
    if isinstance(host, RecordingHost):  # the value with the log of the reads it came from
        return memo_per_round(host, key, compute)
    memo = host.memo
    mkey = ("=", key)
    try:
        return memo[mkey]  # type: ignore[return-value]
    except KeyError:
        pass
    value = memo[mkey] = compute()
    return value


def clear() -> None:
    with _lock:
        _cache.clear()
