"""The one way probes touch the host: paths under a configurable root.

NFD re-roots its reads at /host-sys, /host-proc, ... in containers (pkg/utils/hostpath). We take one
root directory instead (`--host-root`, default `/`), so a whole fixture tree modelled on a real
machine can stand in for the host in tests, and a container can mount the host at /host.
Read helpers return None for unreadable files instead of raising: sysfs files vanish, refuse reads
(EINVAL on a down link's speed) or are not there on older kernels, and NFD omits such values.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FEATURES_D = "/etc/kubernetes/node-feature-discovery/features.d"


@dataclass(frozen=True)
class HostRoot:
    """A host file tree rooted at `root`; `path("/sys/bus/pci")` is `<root>/sys/bus/pci`."""

    root: Path = Path("/")
    features_d: str = DEFAULT_FEATURES_D

    @classmethod
    def checked(cls, root: str | os.PathLike[str]) -> HostRoot:
        """A HostRoot for a directory given by a person; ValueError naming the flag when it is not one."""
        if not Path(root).is_dir():
            raise ValueError(f"--host-root {os.fspath(root)} is not a directory")
        return cls(Path(root))

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        p = os.fspath(host_path)
        return self.root / p.lstrip("/")

    def read_text(self, host_path: str | os.PathLike[str]) -> str | None:
        """Whole file text, or None when it cannot be read."""
        try:
            return self.path(host_path).read_text(errors="replace")
        except (OSError, ValueError):
            return None

    def read_line(self, host_path: str | os.PathLike[str]) -> str | None:
        """First line, stripped, or None when unreadable."""
        text = self.read_text(host_path)
        if text is None:
            return None
        return text.splitlines()[0].strip() if text.strip() else ""

    def read_bytes(self, host_path: str | os.PathLike[str]) -> bytes | None:
        try:
            return self.path(host_path).read_bytes()
        except OSError:
            return None

    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        return self.path(host_path).exists()

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        """Sorted entry names, or [] when the directory is missing or unreadable."""
        try:
            return sorted(os.listdir(self.path(host_path)))
        except OSError:
            return []

    def iterdir(self, host_path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
        """(name, host path) of each entry of a host directory, sorted by name."""
        base = os.fspath(host_path).rstrip("/")
        for name in self.listdir(base):
            yield name, f"{base}/{name}"

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        """Basename of a symlink's target (e.g. a device's driver), or None if not a link."""
        try:
            return os.path.basename(os.readlink(self.path(host_path)))
        except OSError:
            return None
