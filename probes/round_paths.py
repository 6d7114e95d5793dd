"""The path primitives HostRoot's reads go through, for a probe round's host (probes/round_host.py): opening
and stat'ing a host path inside the root through the round's descriptors (openat2 RESOLVE_IN_ROOT, else the
descriptor walk; the kernel's own resolution at `/`), confined reads (`within=`) checked against their
subtree, and host_resolve. A mixin of RoundHost, apart so that module stays within the size rule; how and
why a round resolves this way: round_host.py's docstring. Hand-written: it must keep HostRoot's
confinement exactly.
"""

from __future__ import annotations

import os

from nodecompat.hostroot import _OPEN_FLAGS, HostPathEscape, HostRoot
from nodecompat.probes.root_resolve import (
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


class RootPrimitives(HostRoot):
    """HostRoot's _open, stat and host_resolve for a round's host; RoundHost gives `memo` and `_dirs()`."""

    memo: dict[tuple[str, str], object]

    def _dirs(self) -> DirTable | None:
        """The round's descriptor table, None at `/` (RoundHost._dirs)."""
        raise NotImplementedError

    def _open(self, host_path: str | os.PathLike[str], within: str | None, flags: int = 0) -> int:
        text = os.fspath(host_path)
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
