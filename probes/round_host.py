"""The probe round's host: HostRoot's reads, memoized for one round, through descriptors held per directory.

Within one round the probes share a read-through memo of the host (RoundHost): the PCI and GPU
probes walk the same sysfs tree, and a file read twice in one round is read once. A fresh RoundHost
is made for every round (probes/runner.py), so the memo never outlives it.

How a read resolves (root other than `/`). HostRoot resolves every path component by component with
an lstat each and checks the opened descriptor's real path (/proc/self/fd): 6-8 system calls and
~40 µs of Python per file, most of a round's cost on a fixture tree. Here, where the kernel has it
(Linux 5.6+, not refused by a seccomp filter; tried once per process), a file is opened with
openat2(root descriptor, path, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): the kernel itself resolves
the path as if the host root were `/` (absolute link targets re-rooted, `..` stopping at the root,
at most 40 links) in one system call, race-free. Python has no binding for openat2, so it is called
by the C helper or ctypes (host_c.py). Elsewhere every directory a round touches is opened once, as an
O_PATH descriptor, by `openat(parent descriptor, one name, O_NOFOLLOW)` starting from a descriptor
of the host root, and each file is opened relative to its directory's descriptor with O_NOFOLLOW. A
name that is a symbolic link (the open fails with ELOOP or ENOTDIR) is read with readlinkat and its
target resolved the same way, an absolute target from the host root, at most MAX_SYMLINKS links;
`..` is applied to the resolved host path (it stops at the root) and is never given to the kernel.
So the kernel follows no link and no `..` for us: every descriptor is, by induction from the root's,
a directory that was inside the host root when it was opened, and a component swapped for a link
between two reads is refused by O_NOFOLLOW, not followed. Both give what openat2(RESOLVE_IN_ROOT)
guarantees, which replaces the /proc/self/fd check (it closed a window between resolving and opening
that neither has). Answers are HostRoot's (tests/test_probe_runner.py: both ways, every path of the
fixture trees, links out of the root, loops, dangling and missing parts). Reads confined to a subtree
(`within=`, features.d) go through the held descriptors and are checked against the subtree; with the C
helper an entry of the subtree is first opened beneath the subtree's descriptor (round_paths._beneath).

With the host root at `/` the kernel's resolution is chroot's own (`..` stops at `/`, every real path
is inside the root), so a path is opened (a link read, a path resolved) directly, in one system call.
Reads are bounded in bytes (bounded_read.py: MAX_READ_BYTES, FIFOs refused, not waited on); at most
root_resolve.MAX_HELD_DIRS directory descriptors per round (past that, reads take HostRoot's path),
closed when the RoundHost is collected (weakref.finalize), never while a probe that hung past its
timeout may still read through them. Where the C helper serves the round (host_c.reader: built, and openat2
under a host root), a read, exists/is_dir/is_file, a listing and a link read are each one call into it, the
same resolution and bounds in C (a probe's recording entry noted in that call); the Python below answers
the rest. The path primitives (_open, stat, host_resolve) are in round_paths.py. Hand-written: it must keep
HostRoot's confinement exactly.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodecompat.hostroot import _OPEN_FLAGS, HostRoot, ListingTooLarge, list_names
from nodecompat.probes import host_c
from nodecompat.probes.bounded_read import read_whole, text_of
from nodecompat.probes.held_parents import MISSING, SLOW, HeldParents
from nodecompat.probes.root_resolve import (
    OPENAT2_READ,
    PATH_FLAGS,
    DirTable,
    NoOpenat2,
    Overflow,
    open_in_root,
    openat2_ready,
    opener,
)
from nodecompat.probes.round_paths import ROOT_OPEN_FLAGS, RootPrimitives

_UNSET = object()



@dataclass(frozen=True)
class RoundHost(RootPrimitives):
    """The round's host: every read goes to the host once per round, then comes from the memo."""

    memo: dict[tuple[str, str], object] = field(default_factory=dict, compare=False, repr=False)
    _state: list[DirTable] = field(default_factory=list, compare=False, repr=False)
    _parents: list[HeldParents | None] = field(default_factory=list, compare=False, repr=False)
    # openat2 in the round's root, one call each (root_resolve.opener): [a read, an O_PATH stat, a listing]
    _open2: list[Callable[[str], int]] = field(default_factory=list, compare=False, repr=False)
    hold_hint: frozenset[str] = field(default=frozenset(), compare=False, repr=False)  # see over()
    _cr: list[Any] = field(default_factory=list, compare=False, repr=False)  # c_reader()

    @classmethod
    def over(cls, host: HostRoot, hold_hint: frozenset[str] = frozenset()) -> RoundHost:
        """A round's host over `host`'s tree; hold_hint: directories held at first use (held_parents.py)."""
        new = cls(**{f.name: getattr(host, f.name) for f in dataclasses.fields(host) if f.init})
        new.__dict__["_real_root"] = host._real_root  # the caller's, resolved once (os.path.realpath)
        new.__dict__["hold_hint"] = hold_hint
        return new

    def _dirs(self) -> DirTable | None:
        """The descriptor table (None with the host root at `/`, where the kernel resolves as chroot)."""
        if self._state:
            return self._state[0]
        if self._real_root == "/":
            return None
        self._state.append(DirTable(self._real_root))
        return self._state[0]

    def _held(self) -> HeldParents | None:
        """The round's held directories (held_parents.py) at `/` and with openat2; None for the walk."""
        if self._parents:
            return self._parents[0]
        if self._real_root == "/":
            held: HeldParents | None = HeldParents(None, self.hold_hint)
        else:
            table = self._dirs()
            held = None
            if table is not None and openat2_ready():
                held = HeldParents(table.root[1], self.hold_hint)
                flags = (OPENAT2_READ, PATH_FLAGS, OPENAT2_READ | os.O_DIRECTORY)
                made = [opener(table.root[1], f) for f in flags]
                if all(m is not None for m in made):
                    self._open2.extend(made)  # type: ignore[arg-type]
        self._parents.append(held)
        return held

    def c_reader(self) -> list[Any]:
        """[the round's reads in C (host_c.reader: memo, open, read, decode and a recording's entry in one
        call), or None where they take the Python path below], made at the round's first read. Where it is
        in use, this host's read_bytes/read_text/read_line are then bound to it (host_c.bind: a probe's read
        is one C call, no Python frame; the methods below answer what it hands back)."""
        cr = self._cr
        if not cr:
            cr.extend(host_c.reader(self))  # [reader, the C module, its dirfd, held state, ctx] or [None]
        if cr[0] is not None and "_bound" not in self.__dict__:
            self._bind_readers(cr)
        return cr

    def _bind_readers(self, cr: list[Any]) -> None:
        """This host's reads bound to the C reader `cr` (host_c.bind), noting nothing."""
        host_c.bind(self, cr, None, RoundHost)

    # -- memoized reads --------------------------------------------------------------------------------

    def read_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> bytes | None:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        if within is not None:  # confined reads (features.d) are not memoized: the key would need `within`
            return self._read(path, within)
        c = self.c_reader()[0]
        if c is not None and (got := c(self.memo, path, 0, None)) is not NotImplemented:
            return got
        key = ("b", path)
        value = self.memo.get(key, _UNSET)  # a miss costs no KeyError (most reads of a round are misses)
        if value is _UNSET:
            value = self.memo[key] = self._read(path, None)
        return value  # type: ignore[return-value]

    def read_text(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> str | None:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        if within is not None:
            return text_of(self._read(path, within))
        c = self.c_reader()[0]
        if c is not None and (got := c(self.memo, path, 1, None)) is not NotImplemented:
            return got
        memo = self.memo
        key = ("t", path)
        value = memo.get(key, _UNSET)
        if value is _UNSET:
            bkey = ("b", path)
            raw = memo.get(bkey, _UNSET)
            if raw is _UNSET:
                raw = memo[bkey] = self._read(path, None)
            value = memo[key] = text_of(raw)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    def read_line(self, host_path: str | os.PathLike[str]) -> str | None:
        path = host_path if type(host_path) is str else os.fspath(host_path)
        c = self.c_reader()[0]
        if c is not None and (got := c(self.memo, path, 2, None)) is not NotImplemented:
            return got
        memo = self.memo
        key = ("1", path)
        value = memo.get(key, _UNSET)
        if value is not _UNSET:
            return value  # type: ignore[return-value]
        bkey = ("b", path)
        raw = memo.get(bkey, _UNSET)
        if raw is _UNSET:
            raw = memo[bkey] = self._read(path, None)
        if raw is None:
            value = memo[key] = None
            return None
        text = raw.decode("utf-8", errors="replace")  # type: ignore[attr-defined]  # _text, inline
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        line = memo[key] = text.splitlines()[0].strip() if text.strip() else ""
        return line

    def _read(self, text: str, within: str | None) -> bytes | None:
        """HostRoot.read_bytes (bounded, FIFOs and sockets refused, None when unreadable) in one frame.
        The common case, a file of a directory the round holds, is opened by name right here (what
        HeldParents.open_file does for it, without its two frames); the rest by _read_path."""
        if within is None:
            held = self._parents[0] if self._parents else self._held()
            if held is not None:  # through a held directory (or known missing)
                parent, _, name = text.rpartition("/")
                # a held (or missing) parent's key came from split(): only for a plain last name
                d = held.state.get(parent, SLOW) if name and name != "." and name != ".." else SLOW
                if d >= 0:
                    try:
                        fd = os.open(name, held.file_flags, dir_fd=d)
                    except OSError as exc:
                        if held.root_fd is None or (exc.errno != errno.ELOOP and exc.errno != errno.ENOTDIR):
                            return None  # missing, unreadable: as HostRoot's read
                        # a link under a host root: resolved as a whole path below, never followed here
                    else:
                        return read_whole(fd)  # a page, then one byte to find the end; closes fd
                elif d == MISSING:
                    return None
                else:
                    fd = held.open_file(text)
                    if fd == MISSING:
                        return None
                    if fd >= 0:
                        return read_whole(fd)
        return self._read_path(text, within)

    def _read_path(self, text: str, within: str | None) -> bytes | None:  # _read, the whole path resolved
        fd = -1
        if within is None and self._open2:
            try:  # the kernel resolves the whole path inside the root: one system call
                fd = self._open2[0](text)
                if fd < 0:
                    return None  # missing, unreadable: as HostRoot's read
            except NoOpenat2:
                fd = -1
        elif within is None and not self._state and self._real_root == "/":  # the kernel resolves as chroot
            try:
                fd = os.open(text if text.startswith("/") else "/" + text, ROOT_OPEN_FLAGS)
            except OSError:
                return None
        elif within is None and self._state:  # a file in a directory already held
            parent, _, name = text.rpartition("/")
            sub = self._state[0].by_text.get(parent)
            if sub is not None and name and name != "." and name != "..":
                try:
                    fd = os.open(name, _OPEN_FLAGS, dir_fd=sub[1])
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        return None  # missing, unreadable: as HostRoot's read
        if fd < 0:  # a link to follow, a new directory, the root `/`, `within`
            try:
                fd = self._open(text, within)
            except OSError:
                return None
        return read_whole(fd)  # a page, then one byte to find the end; closes fd (bounded_read.py)

    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        return self._stat_memo(host_path) is not None

    def is_dir(self, host_path: str | os.PathLike[str]) -> bool:
        st = self._stat_memo(host_path)
        return st is not None and stat_mod.S_ISDIR(st[0])

    def is_file(self, host_path: str | os.PathLike[str]) -> bool:
        st = self._stat_memo(host_path)
        return st is not None and stat_mod.S_ISREG(st[0])

    def _stat_memo(self, host_path: str | os.PathLike[str]) -> tuple[int, ...] | None:
        """The path's stat (an os.stat_result, or the C helper's stat_fields: st_mode first) or None, once a
        round."""
        key = ("s", host_path if type(host_path) is str else os.fspath(host_path))
        value = self.memo.get(key, _UNSET)  # a miss costs no KeyError
        if value is _UNSET:
            cr = self._cr or self.c_reader()
            raw = None
            text = key[1]
            if cr[0] is not None:  # _c_whole and host_c.c_path, inline (two frames per stat of a round)
                parent, _, name = text.rpartition("/")
                if (cr[3].get(parent, SLOW) < MISSING or not name or name == "." or name == ".." or text[0] != "/") \
                        and "\0" not in text:
                    raw = os.fsencode(text if text.startswith("/") else "/" + text) if cr[2] < 0 else \
                        os.fsencode(text.rstrip("/") or "/")
            try:  # noqa: SIM105 (a context manager per stat costs more than the stat)
                value = cr[1].stat_fields(cr[2], raw) if raw is not None else _UNSET
            except NoOpenat2:  # openat2 kept racing a rename: the Python path
                pass
            if value is _UNSET:
                value = self.stat_or_none(key[1])
            self.memo[key] = value
        return value  # type: ignore[return-value]

    @staticmethod
    def _c_whole(cr: list[Any], text: str) -> bool:
        """Whether the C helper may answer for `text` by its whole path: its directory is neither held nor
        known missing this round (held_parents.py: those answer through the held descriptor, as stat_file
        and link_name do, so a round's answers about one directory stay consistent)."""
        parent, _, name = text.rpartition("/")
        return cr[3].get(parent, SLOW) < MISSING or not name or name == "." or name == ".." or text[0] != "/"

    def stat_or_none(self, text: str) -> os.stat_result | None:
        """HostRoot.stat, None where it raises (missing, unreachable, outside the root); not memoized,
        and a missing file costs no OSError where the round has the descriptors to tell."""
        held = self._parents[0] if self._parents else self._held()
        if held is not None:  # through a held directory (or known missing)
            got = held.stat_file(text)
            if got != SLOW:
                return got  # type: ignore[return-value]
        if self._open2:
            try:
                fd = self._open2[1](text)
            except NoOpenat2:
                fd = -errno.ENOSYS
            if fd >= 0:
                try:
                    return os.fstat(fd)
                finally:
                    os.close(fd)
            if fd != -errno.ENOSYS:
                return None  # missing or unreachable: as HostRoot.stat's OSError
        try:
            return self.stat(text)
        except OSError:
            return None

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        """HostRoot.listdir's answer, once a round; ListingTooLarge (every call of the round) past the bound."""
        key = ("l", os.fspath(host_path))
        hit = self.memo.get(key)
        if hit is None:
            cr = self._cr or self.c_reader()
            if cr[0] is not None and (raw := host_c.c_path(key[1], cr[2] < 0)) is not None:
                try:  # in C: the directory opened as below, its names read (bounded) and sorted
                    hit = host_c.listing(self.memo, key, cr[1], cr[2], raw, OPENAT2_READ)
                except NoOpenat2:
                    pass
                except ListingTooLarge as exc:
                    hit = exc
        if hit is None:  # HostRoot.listdir; under a host root its openat2 as RoundHost._open makes it, in one call
            try:
                fd = self._open2[2](key[1]) if self._parents and self._open2 else -errno.ENOSYS
            except NoOpenat2:
                fd = -errno.ENOSYS
            try:
                if fd == -errno.ENOSYS:
                    hit = super().listdir(key[1])
                elif fd < 0:
                    hit = []
                else:
                    try:
                        hit = list_names(fd, key[1])
                    except OSError:
                        hit = []
                    finally:
                        os.close(fd)
            except ListingTooLarge as exc:
                hit = exc
            self.memo[key] = hit
        if type(hit) is ListingTooLarge:
            raise hit.with_traceback(None)
        return list(hit)  # type: ignore[call-overload]

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        key = ("k", os.fspath(host_path))
        value = self.memo.get(key, _UNSET)
        if value is _UNSET:
            value = self.memo[key] = self._link_target_name(key[1])
        return value  # type: ignore[return-value]

    def _link_target_name(self, text: str) -> str | None:
        cr = self._cr or self.c_reader()
        if cr[0] is not None and "\0" not in text and self._c_whole(cr, text):  # in C: the parent opened in the
            # root (open(2) at `/`), readlinkat
            at_root = cr[2] < 0
            whole = text.rstrip("/")
            parent, _, name = (whole if not at_root or whole.startswith("/") else "/" + whole).rpartition("/")
            if not name or name in (".", ".."):
                return None
            try:
                return cr[1].link_name(cr[2], os.fsencode(parent.rstrip("/") or "/"), os.fsencode(name))
            except NoOpenat2:
                pass
        held = self._parents[0] if self._parents else self._held()
        if held is not None:  # through a held directory (or known missing)
            got = held.link_name(text)
            if got != SLOW:
                return got  # type: ignore[return-value]
        table = self._dirs()
        text = text.rstrip("/")
        parent, _, name = text.rpartition("/")
        if not name or name in (".", ".."):
            return None
        try:
            if table is None:  # root `/`: the kernel resolves the parent as chroot (HostRoot: realpath, ~100 us)
                return os.path.basename(os.readlink(text if text.startswith("/") else "/" + text))
            try:
                fd = open_in_root(table.root[1], parent or "/", PATH_FLAGS | os.O_DIRECTORY)
            except NoOpenat2:
                return os.path.basename(os.readlink(name, dir_fd=table.directory(parent)[1]))
            try:
                return os.path.basename(os.readlink(name, dir_fd=fd))
            finally:
                os.close(fd)
        except Overflow:
            return super().link_target_name(text)
        except OSError:
            return None

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        key = ("p", os.fspath(host_path))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = super().path(host_path)
        return hit  # type: ignore[return-value]

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None, strict: bool = False) -> Path:
        """HostRoot.resolve, memoized for the round (reads do not use it: they open through descriptors)."""
        if within is not None:
            return super().resolve(host_path, within=within, strict=strict)
        key = ("r" if strict else "rn", os.fspath(host_path))
        hit = self.memo.get(key)
        if hit is None:
            hit = self.memo[key] = super().resolve(key[1], strict=strict)
        return hit  # type: ignore[return-value]
