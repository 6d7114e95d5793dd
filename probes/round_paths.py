"""The path primitives HostRoot's reads go through, for a probe round's host (probes/round_host.py): opening and
stat'ing a host path inside the root through the round's descriptors (openat2 RESOLVE_IN_ROOT, else the
descriptor walk; the kernel's own resolution at `/`), confined reads (`within=`) checked against their subtree
(an entry of it first opened beneath its descriptor in one C call: _beneath), and host_resolve. A mixin of
RoundHost, apart so that module stays within the size rule; how and why a round resolves this way:
round_host.py's docstring. Hand-written: it must keep HostRoot's confinement exactly.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from nodecompat.hostroot import _OPEN_FLAGS, HostPathEscape, HostRoot
from nodecompat.probes import host_c, root_resolve
from nodecompat.probes.held_parents import HeldParents
from nodecompat.probes.root_resolve import (
    MAX_HELD_DIRS,
    OPENAT2_READ,
    PATH_FLAGS,
    Dir,
    DirTable,
    NoOpenat2,
    Overflow,
    components,
    open_in_root,
)

ROOT_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # at `/`: the kernel follows links as chroot
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC  # `within`'s descriptor (_beneath)
_NO_OPENAT2 = (-errno.ENOSYS, -errno.EPERM, -errno.E2BIG)  # openat2 itself unusable (root_resolve._openat2_init)


class RootPrimitives(HostRoot):
    """HostRoot's _open, stat and host_resolve for a round's host; RoundHost gives `memo` and `_dirs()`."""

    memo: dict[tuple[str, str], object]

    def _dirs(self) -> DirTable | None:
        """The round's descriptor table, None at `/` (RoundHost._dirs)."""
        raise NotImplementedError

    def _open(self, host_path: str | os.PathLike[str], within: str | None, flags: int = 0) -> int:
        text = os.fspath(host_path)
        if within is not None and (fd := self._beneath(text, within, OPENAT2_READ | flags)) >= 0:
            return fd
        table = self._dirs()
        if table is None:
            if within is not None:
                return super()._open(text, within, flags)
            # root `/`: the kernel's own resolution is chroot's
            return os.open(text if text.startswith("/") else "/" + text, ROOT_OPEN_FLAGS | flags)
        try:
            if within is not None:
                _, d, name = self._confined(table, text, within)
                return os.open(name, _OPEN_FLAGS | flags, dir_fd=d[1])
            try:
                return open_in_root(table.root[1], text, OPENAT2_READ | flags)
            except NoOpenat2:
                return table.open(text, _OPEN_FLAGS | flags)
        except Overflow:
            return super()._open(text, within, flags)

    def stat(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> os.stat_result:
        text = os.fspath(host_path)
        if within is not None and (fd := self._beneath(text, within, PATH_FLAGS)) >= 0:
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        table = self._dirs()
        if table is None:
            if within is not None:
                return super().stat(text, within=within)
            return os.stat(text if text.startswith("/") else "/" + text)  # the kernel follows as chroot
        try:
            if within is not None:
                return self._confined(table, text, within)[0]
            try:
                fd = open_in_root(table.root[1], text, PATH_FLAGS)
            except NoOpenat2:
                return table.lstat_final(text)[0]
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        except Overflow:
            return super().stat(text, within=within)

    def _beneath(self, text: str, within: str, flags: int) -> int:
        """A descriptor (flags) of `text`, an entry of host directory `within` (within + "/" + a plain
        name, as a walk of features.d names them), opened in one C call by openat2(within's descriptor,
        name, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS): links are followed only while they stay beneath
        `within`, so what opens is inside it, as _confined requires. -1 where that cannot tell (no C
        helper, another path, any error: EXDEV for an absolute link or a ".." out of it, a missing
        entry): the caller takes the walk, which answers and words every refusal as before."""
        c = host_c.module()
        base = within.rstrip("/")
        parent, _, name = text.rpartition("/")
        if c is None or not root_resolve.USE_OPENAT2 or parent != base or not name or name == "." or name == ".." \
                or "\0" in name:
            return -1
        held = self._held()
        if held is None:  # under a host root without openat2: the walk
            return -1
        d = held.beneath.get(within)
        if d is None:
            d = held.beneath[within] = self._within_fd(c, held, within)
        if d < 0:
            return -1
        fd: int = c.openat2(d, os.fsencode(name), flags, True)
        if fd in _NO_OPENAT2:  # not on this kernel, refused by a seccomp filter: the walk from now on
            held.beneath[within] = -1
        return fd if fd >= 0 else -1

    @staticmethod
    def _within_fd(c: Any, held: HeldParents, within: str) -> int:
        """An O_PATH descriptor of host directory `within`, resolved as a path of the root (openat2
        RESOLVE_IN_ROOT under a host root, the kernel's own resolution at `/`), kept with the round's held
        directories (closed with them); -1 when there is none (missing, the bound reached)."""
        if len(held.fds) >= MAX_HELD_DIRS or "\0" in within:
            return -1
        if held.root_fd is None:
            try:
                fd = os.open(within if within.startswith("/") else "/" + within, _DIR_FLAGS)
            except OSError:
                return -1
        else:
            fd = c.openat2(held.root_fd, os.fsencode(within.rstrip("/") or "/"), _DIR_FLAGS)
            if fd < 0:
                return -1
        held.fds.append(fd)
        return fd

    def _held(self) -> HeldParents | None:
        """The round's held directories (RoundHost._held)."""
        raise NotImplementedError

    def _confined(self, table: DirTable, text: str, within: str) -> tuple[os.stat_result, Dir, str]:
        """lstat_final of `text`, refused (HostPathEscape, as HostRoot.resolve words it) when it
        resolves outside the host directory `within`."""
        key = ("w", within)
        base = self.memo.get(key)
        if base is None:
            base = self.memo[key] = components(super().host_resolve(within))
        st, d, name = table.lstat_final(text)
        real = d[0] if name == "." else ("/" + name if d[0] == "/" else d[0] + "/" + name)
        parts = components(real)
        if parts[: len(base)] != base:  # type: ignore[arg-type]
            raise HostPathEscape(text, within, real)
        return st, d, name

    def host_resolve(self, host_path: str | os.PathLike[str], *, strict: bool = False) -> str:
        text = os.fspath(host_path)
        table = self._dirs()
        if strict and table is None and "\0" not in text:  # root `/`: the kernel resolves as chroot (not
            fd = os.open(text if text.startswith("/") else "/" + text, os.O_PATH | os.O_CLOEXEC)  # a walk)
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass  # no /proc: HostRoot's walk
            finally:
                os.close(fd)
        if not strict or table is None:
            return super().host_resolve(text, strict=strict)
        try:
            return table.host_path(text, self._real_root)
        except Overflow:
            return super().host_resolve(text, strict=strict)
