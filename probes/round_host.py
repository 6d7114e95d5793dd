"""The probe round's host: a read-through memo of HostRoot shared by the probes of one round.

Within one round the probes share a read-through memo of the host (RoundHost): the PCI and GPU
probes walk the same sysfs tree, and a file read twice in one round is read once. Path resolution is
memoized per directory as well (the same chroot-like walk as HostRoot's), and with the host root at `/`
a read opens the path directly. Hand-written because it must keep HostRoot's confinement exactly; a
fresh RoundHost is made for every round (probes/runner.py), so the memo never outlives it.
"""

from __future__ import annotations

import dataclasses
import os
import stat as stat_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from nodecompat.hostroot import MAX_SYMLINKS, HostRoot


@dataclass(frozen=True)
class RoundHost(HostRoot):
    """The round's host: every read goes to HostRoot once per round, then comes from the memo."""

    memo: dict[tuple[str, str], object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def over(cls, host: HostRoot) -> RoundHost:
        return cls(**{f.name: getattr(host, f.name) for f in dataclasses.fields(host) if f.init})

    def _get(self, kind: str, host_path: str | os.PathLike[str], read: Callable[[Any], Any]) -> Any:
        key = (kind, os.fspath(host_path))
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = read(host_path)
            return value

    def read_text(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> str | None:
        if within is not None:  # confined reads (features.d) are not memoized: the key would need `within`
            return super().read_text(host_path, within=within)
        return cast("str | None", self._get("t", host_path, super().read_text))

    def read_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> bytes | None:
        if within is not None:
            return super().read_bytes(host_path, within=within)
        return cast("bytes | None", self._get("b", host_path, super().read_bytes))

    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        return cast(bool, self._get("e", host_path, super().exists))

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        return list(self._get("l", host_path, super().listdir))

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        return cast("str | None", self._get("k", host_path, super().link_target_name))

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        return cast(Path, self._get("p", host_path, super().path))

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None, strict: bool = False) -> Path:
        """HostRoot.resolve with every directory resolved once per round.

        The same chroot-like walk as HostRoot's (`..` on the resolved path, a relative link's target
        read from the resolved directory, an absolute one re-rooted at the host root), with each
        resolved prefix kept, so the hundreds of sysfs paths of a round cost one lstat per new
        component. Anything unusual (a missing component, too many links, `within`) takes HostRoot's
        own walk, and reads still check the opened descriptor's real path."""
        if within is not None:
            return super().resolve(host_path, within=within, strict=strict)
        text = os.fspath(host_path)
        key = ("r" if strict else "rn", text)
        hit = self.memo.get(key)
        if hit is not None:
            return cast(Path, hit)
        try:
            resolved = self._walk_memo(text, 0)
        except _Missing as missing:  # only the last component is missing: as HostRoot's walk answers
            if strict:
                raise FileNotFoundError(2, "No such file or directory", text) from None
            resolved = missing.path
        except (OSError, RecursionError):
            resolved = None
        if resolved is None:
            result = super().resolve(text, strict=strict)
        else:
            real_root = self._real_root
            result = Path(resolved if real_root == "/" else real_root.rstrip("/") + resolved)
        self.memo[key] = result
        return result

    def _open(self, host_path: str | os.PathLike[str], within: str | None, flags: int = 0) -> int:
        """HostRoot._open; with the host root at `/` (chroot semantics are the kernel's own there, and
        every real path is inside the root) the kernel resolves the path in the open itself instead of
        a resolve, an O_NOFOLLOW open and a /proc/self/fd check that cannot fail."""
        if within is None and self._real_root == "/":
            text = os.fspath(host_path)
            return os.open(text if text.startswith("/") else "/" + text, _ROOT_OPEN_FLAGS | flags)
        return super()._open(host_path, within, flags)

    def _walk_memo(self, host_path: str, links: int) -> str | None:
        """The resolved host path ("/a/b"), or None to let HostRoot decide (errors, loops).
        Raises _Missing when only the last component is missing, OSError for HostRoot to judge."""
        if links > MAX_SYMLINKS:
            return None
        real_root = self._real_root.rstrip("/")
        cur = "/"
        parts = [p for p in host_path.split("/") if p and p != "."]
        for i, part in enumerate(parts):
            if part == "..":
                cur = cur.rsplit("/", 1)[0] or "/"
                continue
            nxt = cur + part if cur == "/" else cur + "/" + part
            key = ("h", nxt)
            hit = cast("tuple[str, bool] | None", self.memo.get(key))
            if hit is None:
                real = real_root + nxt
                try:
                    st = os.lstat(real)
                except FileNotFoundError:
                    if i == len(parts) - 1:
                        raise _Missing(nxt) from None
                    raise  # a missing directory: HostRoot's walk decides
                if stat_mod.S_ISLNK(st.st_mode):
                    target = os.readlink(real)
                    base = "/" if target.startswith("/") else cur
                    try:
                        resolved = self._walk_memo(base.rstrip("/") + "/" + target, links + 1)
                    except _Missing:  # a dangling link: fine as the last component, else HostRoot decides
                        if i == len(parts) - 1:
                            raise
                        raise FileNotFoundError(2, "No such file or directory", host_path) from None
                    if resolved is None:
                        return None
                    hit = (resolved, os.path.isdir(real_root + resolved))
                else:
                    hit = (nxt, stat_mod.S_ISDIR(st.st_mode))
                self.memo[key] = hit
            cur, is_dir = hit
            if not is_dir and i < len(parts) - 1:
                raise NotADirectoryError(20, "Not a directory", host_path)  # HostRoot's walk decides
        return cur


_ROOT_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class _Missing(Exception):
    def __init__(self, path: str) -> None:
        self.path = path
