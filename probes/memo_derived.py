"""A probe's dependence on a derived value of a host file, for the probe memo (probes/probe_memo.py).

Some host files change on every read in parts no probe publishes: /proc/cpuinfo's `cpu MHz` and
`bogomips` on a host with frequency scaling, /proc/meminfo's MemFree. Logged as bytes, they made the
probes reading them run every round. `derived(host, path, derive)` gives a probe derive(the file's
bytes) and logs that value as the operation's answer: a replay reads the file again (through the
round's host, as every read) and compares the value derived from the new bytes, so a change of what
the probe uses is seen and a change of the rest is not a reason to run it again. Used by
hostcpu.read_cpuinfo (cpuinfo_facts: the first processor's block parsed, and NFD's s390x model) and
memory.MemoryProbe (meminfo_sizes: MemTotal, MemAvailable, SwapTotal).
Hand-written: part of the probe memo (no library), apart to keep that module under its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from nodecompat.hostroot import HostRoot
from nodecompat.probes.probe_memo import _UNSET, RecordingHost, _raised
from nodecompat.probes.round_host import RoundHost

T = TypeVar("T")
MAX_SEEN_BYTES = 64 << 10  # a derived file's bytes are kept beside its value (a replay shortcut) up to this size


def _derived(host: RoundHost, path: str, derive: Callable[[bytes | None], Any], seen: Any = _UNSET,
             value: Any = None) -> Any:  # fmt: skip
    """derive(the bytes of `path` as the round read them), once per round and function (the round's memo).
    A replay passes the bytes the logged `value` came from (`seen`, when kept): equal bytes give that value
    without deriving again (derive is deterministic), so an unchanged file costs a comparison of bytes."""
    raw = RoundHost.read_bytes(host, path)
    if seen is not _UNSET and (raw is seen or raw == seen):
        return value
    memo: dict[Any, Any] = host.memo
    key = ("d", path, derive)
    got = memo.get(key, _UNSET)
    if got is _UNSET:
        got = memo[key] = derive(raw)
    return got


def derived(host: HostRoot, path: str, derive: Callable[[bytes | None], T]) -> T:
    """derive(the bytes of host file `path`, None when unreadable): what a probe depends on from a file
    whose other parts change between reads (/proc/cpuinfo's cpu MHz, /proc/meminfo's MemFree). On a
    recording host that value is logged as the answer (with the bytes it came from, up to MAX_SEEN_BYTES,
    counted in the log's size), so a replay reads the file again (through the round's host, as any read):
    the same bytes answer the logged value, other bytes are derived and the value compared (==). A change
    of what the probe uses is seen, a change of the rest is not a reason to run it again. The probe must use
    nothing else of the file (it does not read it otherwise), and `derive` must be a deterministic
    module-level function of the bytes. Computed once per round and function (the round's memo: the
    cpu probes share one parse); on a HostRoot that is not a round's, derive(host.read_bytes(path))."""
    if isinstance(host, RecordingHost) and not host.log.depth:
        log = host.log
        log.depth = 1
        try:
            raw = RoundHost.read_bytes(host, path)
            value = _derived(host, path, derive)
        except Exception as exc:
            log.entries.append((_derived, (path, derive), _raised(exc)))
            raise
        finally:
            log.depth = 0
        # the bytes beside the value (counted in the log's size), so a replay of an unchanged file derives nothing
        seen = raw if raw is None or len(raw) <= MAX_SEEN_BYTES else _UNSET
        log.entries.append((_derived, (path, derive, seen, value), value))
        return value
    if isinstance(host, RoundHost):
        return _derived(host, path, derive)
    return derive(host.read_bytes(path))
