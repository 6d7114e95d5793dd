"""The one way probes touch the host: paths under a configurable root, resolved as a chroot would.

NFD re-roots its reads at /host-sys, /host-proc, ... in containers (pkg/utils/hostpath). We take one
root directory instead (`--host-root`, default `/`), so a whole fixture tree modelled on a real
machine can stand in for the host in tests, and a container can mount the host at /host.
Read helpers return None for unreadable files instead of raising: sysfs files vanish, refuse reads
(EINVAL on a down link's speed) or are not there on older kernels, and NFD omits such values.

Confinement (docs/security.md, "Host reads"). Every read resolves the host path as if the host root
were `/`, component by component: an absolute symlink target is re-rooted at the host root, `..`
stops at the host root, at most MAX_SYMLINKS links are followed (ELOOP after). So a link to
`/etc/shadow` under a host root of /host means /host/etc/shadow, never this machine's file. The file
is then opened without following a last-moment symlink (O_NOFOLLOW) and the opened descriptor's real
path (/proc/self/fd) is checked to be inside the root, which closes the window between resolving and
opening. `within=` confines a read further to one subtree (features.d entries must stay in
features.d, so a link to /etc/shadow or /proc/self/environ there is refused even when the root is
`/`). A refused path raises HostPathEscape (an OSError, so callers that treat unreadable files as
unknown keep doing so); `escape_problem()` gives the sentence for a probe status.
Hand-written: Python has no openat2(RESOLVE_IN_ROOT) binding, and the walk is a few lines.

API for probes: host.read_text / read_line / read_bytes / listdir / iterdir / exists / is_dir /
is_file / stat / resolve / link_target_name, each taking a host path (and `within=` where it makes
sense). `host.path()` is the lexical path, kept for building fixture trees in tests: do not read
through it.
"""

from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FEATURES_D = "/etc/kubernetes/node-feature-discovery/features.d"
MAX_SYMLINKS = 40  # Linux's own limit for one path resolution (MAXSYMLINKS)
MAX_READ_BYTES = 32 << 20  # the largest host file a probe reads (pci.ids ~1.5 MB, cpuinfo of 512 CPUs ~2 MB)
# The largest directory a probe lists, in entries and in bytes of names. The largest real ones are
# /sys/bus/pci/devices (~1-2k functions on big hosts), /sys/class/net with SR-IOV VFs and their switchdev
# representors (a few thousand), /sys/devices/system/cpu (~1k on the largest hosts) and /sys/block (a few
# thousand LUNs on storage hosts): 65536 is >10x those, and a listing of it costs ~6 MB of Python strings
# (review7: a 400,000-entry directory cost ~330 MB unbounded). Names: sysfs names are <= 16 bytes, NAME_MAX
# is 255; 4 MiB is 65536 names of 64 bytes.
MAX_LIST_ENTRIES = 1 << 16
MAX_LIST_BYTES = 4 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class ListingTooLarge(Exception):
    """A host directory with more entries (or bytes of names) than a probe lists: an error, never a
    truncated listing. Deliberately not an OSError: probes read an unreadable path (OSError) as "absent",
    and a truncated or empty set would publish "device absent", a value the probe did not establish; so
    the probe fails and its status says this message (its features left out, probes/runner.py)."""

    def __init__(self, host_path: str, what: str) -> None:
        super().__init__(f"listing of {host_path} exceeds {what}: not listed (the probe publishes nothing from it)")
        self.host_path = host_path


def list_names(fd: int, host_path: str, max_entries: int | None = None, max_bytes: int | None = None) -> list[str]:
    """Sorted names of the open directory `fd` (not closed here; . and .. left out), read entry by entry
    (os.scandir: getdents in ~32 KB batches) and stopped at the bound, so a hostile directory never costs
    more than the bound in memory. Bounds default to MAX_LIST_ENTRIES / MAX_LIST_BYTES (read at call time).
    Raises ListingTooLarge past a bound, OSError when the directory cannot be read."""
    entries = MAX_LIST_ENTRIES if max_entries is None else max_entries
    limit = MAX_LIST_BYTES if max_bytes is None else max_bytes
    names: list[str] = []
    total = 0
    with os.scandir(fd) as it:
        for entry in it:
            name = entry.name
            total += len(name) if name.isascii() else len(os.fsencode(name))  # bytes, as the C helper counts
            if len(names) >= entries:
                raise ListingTooLarge(host_path, f"{entries} entries")
            if total > limit:
                raise ListingTooLarge(host_path, f"{limit} bytes of names")
            names.append(name)
    names.sort()
    return names


class HostPathEscape(OSError):
    """A host path that leads outside the host root or outside the subtree it must stay in."""

    def __init__(self, host_path: str, where: str, to: str) -> None:
        super().__init__(errno.EXDEV, f"{host_path} leads outside {where} (to {to}): not read")
        self.host_path = host_path
        self.where = where
        self.to = to

    def __str__(self) -> str:
        return str(self.strerror)


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


@dataclass(frozen=True)
class HostRoot:
    """A host file tree rooted at `root`; `path("/sys/bus/pci")` is `<root>/sys/bus/pci` (lexically)."""

    root: Path = Path("/")
    features_d: str = DEFAULT_FEATURES_D

    @classmethod
    def checked(cls, root: str | os.PathLike[str]) -> HostRoot:
        """A HostRoot for a directory given by a person; ValueError naming the flag when it is not one."""
        if not Path(root).is_dir():
            raise ValueError(f"--host-root {os.fspath(root)} is not a directory")
        return cls(Path(root))

    @functools.cached_property
    def _real_root(self) -> str:
        return os.path.realpath(self.root)

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        """The lexical path under the root (no symlink resolution): for building trees, not reading."""
        p = os.fspath(host_path)
        return self.root / p.lstrip("/")

    # -- resolution ---------------------------------------------------------------------------------

    def _walk(self, host_path: str, strict: bool) -> list[str]:
        """Resolved host-side components of host_path (chroot semantics); OSError when strict and missing."""
        todo = list(reversed(_components(host_path)))
        done: list[str] = []
        links = 0
        missing = False
        while todo:
            part = todo.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            if missing:
                done.append(part)
                continue
            candidate = os.path.join(self._real_root, *done, part)
            try:
                st = os.lstat(candidate)
            except OSError as exc:
                if strict or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise
                missing = True
                done.append(part)
                continue
            if stat_mod.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, f"{host_path}: more than {MAX_SYMLINKS} symbolic links")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []  # absolute targets are re-rooted at the host root
                todo.extend(reversed(_components(target)))
                continue
            if todo and not stat_mod.S_ISDIR(st.st_mode):
                if strict:
                    raise OSError(errno.ENOTDIR, f"{host_path}: not a directory")
                missing = True
            done.append(part)
        return done

    def host_resolve(self, host_path: str | os.PathLike[str], *, strict: bool = False) -> str:
        """The host path host_path resolves to, as the host would see it (e.g. "/sys/devices/...")."""
        return "/" + "/".join(self._walk(os.fspath(host_path), strict))

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None,
                strict: bool = False) -> Path:
        """The path on this machine host_path resolves to, inside the root (and inside `within`,
        a host directory, when given). Raises HostPathEscape when `within` is left, OSError
        (ENOENT, ELOOP, ...) when strict and the path does not resolve."""
        text = os.fspath(host_path)
        if self._real_root == "/":
            # Chroot semantics at "/" are the kernel's own (".." stops at "/"): let it resolve.
            real = os.path.realpath(text if text.startswith("/") else "/" + text, strict=strict)
            parts = _components(real)
        else:
            parts = self._walk(text, strict)
        if within is not None:
            base = _components(self.host_resolve(within))
            if parts[: len(base)] != base:
                raise HostPathEscape(text, within, "/" + "/".join(parts))
        return Path(self._real_root, *parts)

    def escape_problem(self, host_path: str | os.PathLike[str], within: str | None = None) -> str:
        """A sentence for a probe status when host_path escapes (else "")."""
        try:
            self.resolve(host_path, within=within)
        except HostPathEscape as exc:
            return str(exc)
        except OSError:
            return ""
        return ""

    def _check_fd(self, fd: int, host_path: str, within: str | None) -> None:
        """Refuse an opened file whose real path is outside the root/`within` (a swap after resolving)."""
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return  # no /proc: the component walk is all we have
        base = self._real_root if within is None else str(self.resolve(within))
        if base != "/" and real != base and not real.startswith(base.rstrip("/") + "/"):
            raise HostPathEscape(host_path, within or "the host root", real)

    def _open(self, host_path: str | os.PathLike[str], within: str | None, flags: int = 0) -> int:
        text = os.fspath(host_path)
        real = self.resolve(text, within=within, strict=True)
        fd = os.open(real, _OPEN_FLAGS | flags)
        try:
            self._check_fd(fd, text, within)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- reads --------------------------------------------------------------------------------------

    def open_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None,
                   max_bytes: int = MAX_READ_BYTES) -> bytes:
        """Whole file contents (at most max_bytes, else OSError EFBIG); raises OSError/HostPathEscape.
        FIFOs and sockets are refused (ENXIO) rather than waited on."""
        fd = self._open(host_path, within)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISFIFO(st.st_mode) or stat_mod.S_ISSOCK(st.st_mode):
                raise OSError(errno.ENXIO, f"{os.fspath(host_path)} is not a file")
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise OSError(errno.EFBIG, f"{os.fspath(host_path)} is larger than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> bytes | None:
        """Whole file contents, or None when it cannot be read (or leads outside the root/`within`)."""
        try:
            return self.open_bytes(host_path, within=within)
        except OSError:
            return None

    def read_text(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> str | None:
        """Whole file text (undecodable bytes replaced), or None when it cannot be read."""
        raw = self.read_bytes(host_path, within=within)
        if raw is None:
            return None
        text = raw.decode("utf-8", errors="replace")
        return text.replace("\r\n", "\n").replace("\r", "\n")  # as Path.read_text's universal newlines

    def read_line(self, host_path: str | os.PathLike[str]) -> str | None:
        """First line, stripped, or None when unreadable."""
        text = self.read_text(host_path)
        if text is None:
            return None
        return text.splitlines()[0].strip() if text.strip() else ""

    def stat(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> os.stat_result:
        """stat of the resolved path (never of something outside the root); raises OSError/HostPathEscape."""
        return os.lstat(self.resolve(host_path, within=within, strict=True))

    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        try:
            self.stat(host_path)
        except OSError:
            return False
        return True

    def is_dir(self, host_path: str | os.PathLike[str]) -> bool:
        try:
            return stat_mod.S_ISDIR(self.stat(host_path).st_mode)
        except OSError:
            return False

    def is_file(self, host_path: str | os.PathLike[str]) -> bool:
        try:
            return stat_mod.S_ISREG(self.stat(host_path).st_mode)
        except OSError:
            return False

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        """Sorted entry names, or [] when the directory is missing, unreadable or outside the root.
        ListingTooLarge past MAX_LIST_ENTRIES entries or MAX_LIST_BYTES bytes of names (list_names)."""
        try:
            fd = self._open(host_path, None, os.O_DIRECTORY)
        except OSError:
            return []
        try:
            return list_names(fd, os.fspath(host_path))
        except OSError:
            return []
        finally:
            os.close(fd)

    def iterdir(self, host_path: str | os.PathLike[str]) -> Iterator[tuple[str, str]]:
        """(name, host path) of each entry of a host directory, sorted by name (ListingTooLarge as listdir)."""
        base = os.fspath(host_path).rstrip("/")
        for name in self.listdir(base):
            yield name, f"{base}/{name}"

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        """Basename of a symlink's target (e.g. a device's driver), or None if not a link."""
        text = os.fspath(host_path).rstrip("/")
        parent, _, name = text.rpartition("/")
        if not name or name in (".", ".."):
            return None
        try:
            return os.path.basename(os.readlink(self.resolve(parent or "/", strict=True) / name))
        except OSError:
            return None
