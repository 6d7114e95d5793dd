"""A probe's result reused across rounds while every host answer it depended on is unchanged (issue 11).

A probe's discover() is a deterministic function of what it read through the round's host (probes
read the host only through it: probes/base.py; the few inputs that are not the host are said below).
So during a round each memoizable probe gets its own view of the round's host (RecordingHost: the
round's memo and descriptors, shared) that notes every host operation the probe made and its answer
(bytes read, names listed, link target, the stat fields below, booleans, the exception raised). Next
round, before running the probe, the runner replays that log through the new round's host (the same
confined, bounded reads: probes/round_host.py) and compares each answer with cheap equality (bytes ==);
when all are equal the probe would take the same path and return the same result, so the previous
ProbeOutput (the same object) is reused; at the first difference the probe runs for real and is recorded
anew. Reads still happen every round, so a changed host is always seen: nothing is trusted from a time
or an mtime, except where the probe itself trusts it (parsecache.parsed, below).

What the log holds, per operation (fn, args, answer), fn(round host, *args) giving the answer again:
- read_bytes / read_text / read_line / open_bytes: the bytes (text is a function of the bytes);
- exists / is_dir / is_file: the boolean; stat / stat_or_none: mode, inode, device, links, owner, size,
  mtime and ctime in ns (not atime, which reads change); listdir: the names; link_target_name,
  resolve, host_resolve: the answer;
- an exception: its type, errno and message (a probe's status may quote it);
- parsecache.parsed(path): the file's identity only (dev, inode, size, mtime), the reads of its parse not
  logged: the probe itself reuses that parse while the identity is unchanged, so the replay decides as
  the probe would. parsecache.per_round values carry the log of their computation, so a probe served
  from the round's memo by another probe's computation still logs the reads it depends on;
- `derived(host, path, derive)`: derive(the file's bytes) only, for a file whose other parts change
  between reads (cpuinfo's cpu MHz and bogomips, meminfo's MemFree): the file is read again on replay
  and only the value the probe uses is compared (probes/memo_derived.py: hostcpu.cpuinfo_facts,
  memory.meminfo_sizes);
- inputs that are not the host file tree, logged with `noted()` (or `noted_answer()`, the answer the
  probe computed) and asked again on replay: the CPUID device's state and registers (hostcpu.py),
  $NODE_NAME (system.py), which of features.d's expiry times have passed (local.py: the result is
  reused until one passes, then local runs).
A probe that uses a source that cannot be asked again cheaply (NVML, psutil, the clock) calls
`not_replayable(host)` on that path and is run every round; a probe class whose `memoizable` is False
(probes/base.py: the default, so a third-party plugin nobody audited always runs) is never memoized, nor
is one that inherits True without declaring it itself (`declared_memoizable`): a plugin subclassing a
built-in probe to change its discover() was never audited for it.

Bounded: a log (answers counted in bytes, ~64 bytes per operation) over MAX_LOG_BYTES is dropped and
the probe runs every round. Only a successful outcome is kept (features + notes: the probe's status is
built from them); a probe that raised, hung or returned something unusable is run again next round.
The reused ProbeOutput is shared between rounds: it must not be changed (the round moves its features
as it did before, probes/runner.py _take).

Hand-written: a replay-validated memo of a plugin call over a custom host API has no library.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any, TypeVar

from nodecompat.probes import host_c
from nodecompat.probes.bounded_read import text_of
from nodecompat.probes.round_host import RoundHost

T = TypeVar("T")
MAX_LOG_BYTES = 1 << 20  # a probe whose answers weigh more is not memoized
_ENTRY_BYTES = 64  # what one operation is counted for besides its answer's bytes
_UNSET = object()
_BOUND = (*host_c.READS, "_bound")  # what host_c.bind puts in a host's __dict__

Entry = tuple[Callable[..., Any], tuple[Any, ...], Any]  # (fn, args, answer): fn(host, *args) == answer


class _Never:
    """An answer no replay equals: a log holding it is never reused (a file changed while it was parsed)."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


@dataclass(frozen=True)
class Raised:
    """The answer of an operation that raised: its type, errno and message."""

    kind: type
    errno: int | None
    text: str


def _raised(exc: BaseException) -> Raised:
    return Raised(type(exc), getattr(exc, "errno", None), str(exc))


def _stat_fields(st: os.stat_result | None) -> tuple[int, ...] | None:
    if st is None:
        return None
    return (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
            st.st_mtime_ns, st.st_ctime_ns)  # fmt: skip


class _Log:
    """What one probe's recording noted: entries in order, whether it can be reused, nesting depth."""

    __slots__ = ("depth", "entries", "poisoned")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.depth = 0  # > 0 inside an operation (its own inner calls are not noted) or a parse
        self.poisoned = ""  # why the outcome may not be reused ("" when it may)


# -- replay functions: fn(host, *args) -> the answer as logged ----------------------------------------


_read_bytes = RoundHost.read_bytes  # (host, path): a whole read, as the round's memo holds it (no extra frame)
_exists, _is_dir, _is_file = RoundHost.exists, RoundHost.is_dir, RoundHost.is_file  # (host, path): the boolean


def _read_within(host: RoundHost, path: str, within: str) -> bytes | None:
    return RoundHost.read_bytes(host, path, within=within)


def _open_bytes(host: RoundHost, path: str, within: str | None, max_bytes: int) -> bytes:
    return RoundHost.open_bytes(host, path, within=within, max_bytes=max_bytes)


def _stat(host: RoundHost, path: str, within: str | None) -> tuple[int, ...] | None:
    return _stat_fields(RoundHost.stat(host, path, within=within))


def _stat_or_none(host: RoundHost, path: str) -> tuple[int, ...] | None:
    return _stat_fields(RoundHost.stat_or_none(host, path))


def _resolve(host: RoundHost, path: str, within: str | None, strict: bool) -> Path:
    return RoundHost.resolve(host, path, within=within, strict=strict)


def _host_resolve(host: RoundHost, path: str, strict: bool) -> str:
    return RoundHost.host_resolve(host, path, strict=strict)


def _noted(_host: RoundHost, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _identity(host: RoundHost, path: str) -> object:
    from nodecompat.probes.parsecache import identity

    return identity(host, path)


@dataclass(frozen=True)
class RecordingHost(RoundHost):
    """One probe's view of the round's host (the round's memo and descriptors, shared) noting every
    host operation the probe makes, with its answer, in `log`."""

    log: _Log = field(default_factory=_Log, compare=False, repr=False)

    @classmethod
    def of(cls, round_host: RoundHost) -> RecordingHost:
        """A new recording view sharing `round_host`'s memo, descriptors and resolved root."""
        new = object.__new__(cls)  # the frozen dataclass's __init__ (a guarded setattr per field) skipped:
        d = new.__dict__  # one per probe per round
        d.update(round_host.__dict__)  # root, features_d, memo, descriptors, _real_root: the same objects
        log = d["log"] = _Log()
        cr = round_host._cr
        if cr and cr[0] is not None:  # the round's C reader: this view's reads bound to it, each noted in its log
            host_c.bind(new, cr, log, RecordingHost)
        else:  # the round host's C readers (if any) note nothing: this view binds its own at its first read
            for name in _BOUND:
                d.pop(name, None)
        return new

    def _bind_readers(self, cr: list[Any]) -> None:
        """This view's reads bound to the C reader `cr` (host_c.bind), each noted in its log."""
        host_c.bind(self, cr, self.log, RecordingHost)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...], answer: Callable[[Any], Any] | None = None) -> Any:
        """fn(self, *args), noted with its answer (answer(result) when given) unless nested in another."""
        log = self.log
        if log.depth:
            return fn(self, *args)
        log.depth = 1
        try:
            result = fn(self, *args)
        except Exception as exc:
            log.entries.append((fn, args, _raised(exc)))
            raise
        finally:
            log.depth = 0
        log.entries.append((fn, args, result if answer is None else answer(result)))
        return result

    # reads: the bytes are the answer
    def read_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> bytes | None:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        if within is not None:
            return self._call(_read_within, (path, within))
        log = self.log  # RoundHost.read_bytes calls no method noted here: no depth to keep (one frame less)
        c = self.c_reader()[0]  # the read and its entry in one C call (host_c.reader)
        if c is not None and (got := c(self.memo, path, 0, None if log.depth else log.entries)) is not NotImplemented:
            return got
        try:
            raw = RoundHost.read_bytes(self, path)
        except Exception as exc:
            if not log.depth:
                log.entries.append((_read_bytes, (path,), _raised(exc)))
            raise
        if not log.depth:
            log.entries.append((_read_bytes, (path,), raw))
        return raw

    def read_text(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> str | None:
        path = os.fspath(host_path)
        if within is not None:  # confined reads are not in the round's memo: read once, decoded here
            raw = RoundHost.read_bytes(self, path, within=within)
            if not self.log.depth:
                self.log.entries.append((_read_within, (path, within), raw))
            return text_of(raw)
        c = self.c_reader()[0]
        if c is not None and (got := c(self.memo, path, 1, None if self.log.depth else self.log.entries)) \
                is not NotImplemented:
            return got
        text = RoundHost.read_text(self, path)  # calls no method noted here
        if not self.log.depth:
            self.log.entries.append((_read_bytes, (path,), self.memo.get(("b", path))))
        return text

    def read_line(self, host_path: str | os.PathLike[str]) -> str | None:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        c = self.c_reader()[0]
        if c is not None and (got := c(self.memo, path, 2, None if self.log.depth else self.log.entries)) \
                is not NotImplemented:
            return got
        line = RoundHost.read_line(self, path)  # calls no method noted here
        if not self.log.depth:
            self.log.entries.append((_read_bytes, (path,), self.memo.get(("b", path))))
        return line

    def open_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None,
                   max_bytes: int = 32 << 20) -> bytes:  # fmt: skip
        return self._call(_open_bytes, (os.fspath(host_path), within, max_bytes))

    # stat family: booleans, or the stat fields that do not change by reading. exists/is_dir/is_file are
    # _call(RoundHost.exists, ...) written out (~40 a round: two frames each); the entries are the same.
    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        log = self.log
        if log.depth:
            return self._stat_memo(path) is not None
        log.depth = 1
        try:
            found = self._stat_memo(path) is not None
        except Exception as exc:
            log.entries.append((_exists, (path,), _raised(exc)))
            raise
        finally:
            log.depth = 0
        log.entries.append((_exists, (path,), found))
        return found

    def is_dir(self, host_path: str | os.PathLike[str]) -> bool:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        log = self.log
        if log.depth:
            return RoundHost.is_dir(self, path)
        log.depth = 1
        try:
            st = self._stat_memo(path)
        except Exception as exc:
            log.entries.append((_is_dir, (path,), _raised(exc)))
            raise
        finally:
            log.depth = 0
        found = st is not None and S_ISDIR(st[0])
        log.entries.append((_is_dir, (path,), found))
        return found

    def is_file(self, host_path: str | os.PathLike[str]) -> bool:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        log = self.log
        if log.depth:
            return RoundHost.is_file(self, path)
        log.depth = 1
        try:
            st = self._stat_memo(path)
        except Exception as exc:
            log.entries.append((_is_file, (path,), _raised(exc)))
            raise
        finally:
            log.depth = 0
        found = st is not None and S_ISREG(st[0])
        log.entries.append((_is_file, (path,), found))
        return found

    def stat(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> os.stat_result:
        path = os.fspath(host_path)
        log = self.log
        if log.depth:
            return RoundHost.stat(self, path, within=within)
        log.depth = 1
        try:
            st = RoundHost.stat(self, path, within=within)
        except Exception as exc:
            log.entries.append((_stat, (path, within), _raised(exc)))
            raise
        finally:
            log.depth = 0
        log.entries.append((_stat, (path, within), _stat_fields(st)))
        return st

    def stat_or_none(self, text: str) -> os.stat_result | None:
        log = self.log
        if log.depth:
            return RoundHost.stat_or_none(self, text)
        log.depth = 1
        try:
            st = RoundHost.stat_or_none(self, text)
        finally:
            log.depth = 0
        log.entries.append((_stat_or_none, (text,), _stat_fields(st)))
        return st

    # names and links
    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        return self._call(RoundHost.listdir, (os.fspath(host_path),))

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        return self._call(RoundHost.link_target_name, (os.fspath(host_path),))

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None, strict: bool = False) -> Path:
        return self._call(_resolve, (os.fspath(host_path), within, strict))

    def host_resolve(self, host_path: str | os.PathLike[str], *, strict: bool = False) -> str:
        return self._call(_host_resolve, (os.fspath(host_path), strict))


def declared_memoizable(probe_type: type) -> bool:
    """Whether `probe_type` itself declares `memoizable = True` (in its own class body): the promise is
    about that class's code, so a subclass inheriting it (a plugin overriding discover() or a helper it
    calls) is run every round until it declares it too."""
    return vars(probe_type).get("memoizable") is True


def noted(host: object, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args): an input of a probe that is not the host file tree (a device register, the
    environment); on a recording host it is logged and asked again on replay. Exceptions propagate."""
    if not isinstance(host, RecordingHost) or host.log.depth:
        return fn(*args)
    return host._call(_noted, (fn, *args))


def noted_answer(host: object, fn: Callable[..., Any], args: tuple[Any, ...], answer: Any) -> None:
    """Log that fn(*args) answered `answer` for the probe, computed by the probe itself at the moment its
    result depended on it (the clock a parse was made with: probes/local.py); a replay calls fn(*args)
    again and the probe runs when it answers otherwise. No effect on other hosts."""
    if isinstance(host, RecordingHost) and not host.log.depth:
        host.log.entries.append((_noted, (fn, *args), answer))


def not_replayable(host: object, why: str) -> None:
    """Say that the probe's outcome this round came from a source a replay cannot ask again (NVML,
    psutil, the clock): it is not reused, the probe runs next round. No effect on other hosts."""
    if isinstance(host, RecordingHost) and not host.log.poisoned:
        host.log.poisoned = why


def per_round(host: RecordingHost, key: str, compute: Callable[[], T]) -> T:
    """parsecache.per_round on a recording host: the value with the log of its computation, so every
    probe using it logs the operations it depends on (whichever probe computed it), and with the
    not_replayable reason its computation gave, so every probe using it runs again next round."""
    log = host.log
    if log.depth:  # inside an unlogged parse: computed, not kept (its log would be incomplete)
        return compute()
    mkey = ("=r", key)
    hit: Any = host.memo.get(mkey)
    if hit is not None:
        log.entries.extend(hit[1])
        if hit[2]:  # computed from a source a replay cannot ask again: so is every use of it
            not_replayable(host, hit[2])
        return hit[0]
    outer, before = log.entries, log.poisoned
    log.entries, log.poisoned = [], ""
    try:
        value = compute()
    finally:
        inner, log.entries = log.entries, outer
        why, log.poisoned = log.poisoned, before or log.poisoned
        outer.extend(inner)
    host.memo[mkey] = (value, inner, why)
    return value


def parsed_identity(host: RecordingHost, ident: object, parse: Callable[[], T], again: Callable[[], object]) -> T:
    """parsecache.parsed's parse on a recording host: the identity (already logged) stands for the
    file, its reads are not logged; a file whose identity changed while it was parsed is never reused."""
    log = host.log
    if log.depth:
        return parse()
    log.depth = 1
    try:
        value = parse()
        same = again() == ident
    finally:
        log.depth = 0
    if not same:
        log.entries.append((_noted, (_never,), _Never()))
    return value


def _never() -> object:
    return None
