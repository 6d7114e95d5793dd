"""Resolving host paths inside a host root for a probe round: openat2(RESOLVE_IN_ROOT), else a walk
through directory descriptors held for the round. How and why: probes/round_host.py's docstring.

Hand-written: Python has no openat2 binding (the C helper calls it, probes/host_c.py; without it ctypes,
imported only when a round first needs it), and no library walks a tree by descriptors with chroot's
link semantics.
"""

from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
import sys
import weakref
from collections.abc import Callable
from typing import Any

from nodecompat.hostroot import _OPEN_FLAGS, MAX_SYMLINKS
from nodecompat.probes import host_c

MAX_HELD_DIRS = 256  # directory descriptors one round may hold (a round on h100-server holds ~60)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
OPENAT2_READ = _OPEN_FLAGS & ~os.O_NOFOLLOW  # RESOLVE_IN_ROOT follows a last link inside the root

Dir = tuple[str, int]  # (resolved host path, "/sys/devices/...", O_PATH descriptor)


class Loop(OSError):
    """More than MAX_SYMLINKS links (ELOOP); open/lstat_final say it naming the host path, as HostRoot does."""

    def __init__(self) -> None:
        super().__init__(errno.ELOOP, f"more than {MAX_SYMLINKS} symbolic links")


class Overflow(Exception):
    """More directories than MAX_HELD_DIRS: the caller takes HostRoot's path."""


def _close_all(fds: list[int]) -> None:
    """Close a round's descriptors (its finalizer). try/except, not contextlib.suppress: a context manager
    made per descriptor cost more than the close (~40-110 of them per round)."""
    close = os.close
    for fd in fds:
        try:  # noqa: SIM105 (measured: suppress() costs more than the close)
            close(fd)
        except OSError:
            pass
    fds.clear()


def components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


# -- openat2(2) with RESOLVE_IN_ROOT: the kernel resolves a whole path as chroot, in one system call ----

SYS_OPENAT2 = 437  # the same number on every Linux architecture (syscalls added after 5.1 are unified)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
USE_OPENAT2 = True  # tests turn it off to exercise the descriptor walk (kernels before 5.6, seccomp)
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_openat2_state: list[Any] = []  # [] untried; [None] unavailable; [_c_call] available


class NoOpenat2(Exception):
    """openat2 is unavailable here (or a rename kept racing it): the descriptor walk decides."""


def _c_call(dirfd: int, path: bytes, flags: int) -> int:
    """openat2(dirfd, path, flags) in the root: a descriptor or -errno, through the C helper when it is
    built and in use (probes/host_c.py), else through ctypes."""
    c = host_c.module()
    if c is None:
        return _ctypes_call(dirfd)(dirfd, path, flags)
    return c.openat2(dirfd, path, flags)


def _c_opener(dirfd: int, flags: int) -> Callable[[str], int]:
    c = host_c.module()
    if c is None:
        return _ctypes_call(dirfd).opener(dirfd, flags)
    c.set_retry_error(NoOpenat2)  # a third EAGAIN (a rename racing a `..`): NoOpenat2, as the ctypes path
    return functools.partial(c.open_text, dirfd, flags)


_c_call.opener = _c_opener  # type: ignore[attr-defined]
_ctypes_state: list[Any] = []  # the ctypes call ([None]: unavailable), made at its first use


def _ctypes_call(root_fd: int) -> Any:
    """The ctypes call (made once, tried on root_fd); NoOpenat2 when ctypes cannot make it."""
    if not _ctypes_state:
        _ctypes_state[:] = [_ctypes_init(root_fd)]
    if _ctypes_state[0] is None:
        raise NoOpenat2
    return _ctypes_state[0]


def _openat2_init(root_fd: int) -> None:
    """Find out once per process whether openat2(RESOLVE_IN_ROOT) works: through the C helper when built
    (probes/host_c.py), else through ctypes (imported only then)."""
    c = host_c.module()
    if c is None:
        ok = _ctypes_state[0] if _ctypes_state else _ctypes_init(root_fd)
        _ctypes_state[:] = [ok]
        _openat2_state[:] = [_c_call if ok is not None else None]
        return
    probe = c.openat2(root_fd, b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if probe < 0:  # ENOSYS (before 5.6), EPERM (a seccomp filter), E2BIG/EINVAL (no such flags)
        _openat2_state[:] = [None]
        return
    os.close(probe)
    _openat2_state[:] = [_c_call]


def _ctypes_init(root_fd: int) -> Any:
    """openat2 through ctypes (the path without the C helper): the call, or None when it does not work."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        # No argtypes: converting five arguments on every call cost more than the system call. Every
        # argument is passed as a ctypes object of syscall(2)'s width instead (long: the number, the
        # directory descriptor, the pointers, the size), the ones that do not change made once.
        number, size = ctypes.c_long(SYS_OPENAT2), ctypes.c_size_t(24)

        class OpenHow(ctypes.Structure):  # struct open_how, include/uapi/linux/openat2.h
            _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

        hows: dict[int, Any] = {}  # flags -> pointer to its open_how (the struct kept alive by the pointer)
        dirfds: dict[int, Any] = {}  # descriptor -> c_long (a round's root descriptor, reused)
        get_errno, c_long, pointer = ctypes.get_errno, ctypes.c_long, ctypes.pointer

        def call(dirfd: int, path: bytes, flags: int) -> int:
            how = hows.get(flags)
            if how is None:
                how = hows[flags] = pointer(OpenHow(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS))
            fdarg = dirfds.get(dirfd)
            if fdarg is None:
                if len(dirfds) > 64:
                    dirfds.clear()
                fdarg = dirfds[dirfd] = c_long(dirfd)
            fd: int = fn(number, fdarg, path, how, size)
            return fd if fd >= 0 else -get_errno()

        def opener(dirfd: int, flags: int) -> Any:
            """open_in_root_errno(dirfd, text, flags) in one frame, its ctypes arguments made once."""
            how = pointer(OpenHow(flags, 0, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS))
            fdarg = c_long(dirfd)
            enc, errs = _FS_ENCODING, _FS_ERRORS

            def open_text(text: str) -> int:
                if "\0" in text:
                    raise ValueError("embedded null byte")
                fd: int = fn(number, fdarg, (text.rstrip("/") or "/").encode(enc, errs), how, size)
                if fd >= 0:
                    return fd
                err: int = get_errno()
                if err == errno.EAGAIN:  # a rename raced a `..`: open_in_root_errno's retries
                    return open_in_root_errno(dirfd, text, flags)
                return -err

            return open_text

        call.opener = opener  # type: ignore[attr-defined]
        probe = call(root_fd, b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except (OSError, AttributeError, ImportError):
        return None
    if probe < 0:  # ENOSYS (before 5.6), EPERM (a seccomp filter), E2BIG/EINVAL (no such flags)
        return None
    os.close(probe)
    return call


def open_in_root_errno(root_fd: int, text: str, flags: int) -> int:
    """open_in_root, with a failure returned as -errno instead of raised (a probe round asks for many
    files a host does not have; an OSError each costs more than the system call)."""
    state = _openat2_state[0] if _openat2_state else None
    if state is None or not USE_OPENAT2:
        raise NoOpenat2
    if "\0" in text:
        raise ValueError("embedded null byte")
    # os.fsencode's encoding, without its two Python-level calls; HostRoot reads "/etc/os-release/" as the file
    path = (text.rstrip("/") or "/").encode(_FS_ENCODING, _FS_ERRORS)
    fd: int = state(root_fd, path, flags)
    if fd == -errno.EAGAIN:  # a rename raced a `..`: the kernel asks to try again (twice more)
        fd = state(root_fd, path, flags)
        if fd == -errno.EAGAIN:
            fd = state(root_fd, path, flags)
            if fd == -errno.EAGAIN:
                raise NoOpenat2
    return fd


def opener(root_fd: int, flags: int) -> Callable[[str], int] | None:
    """open_in_root_errno(root_fd, ·, flags) for one round's root descriptor and flags, as one call
    (the frames and look-ups of the general one cost more than the difference between openat2 and a
    plain open); None when openat2 is unavailable. Raises as open_in_root_errno."""
    state = _openat2_state[0] if _openat2_state else None
    if state is None or not USE_OPENAT2:
        return None
    made: Callable[[str], int] = state.opener(root_fd, flags)
    return made


def open_in_root(root_fd: int, text: str, flags: int) -> int:
    """openat2(root_fd, text, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): absolute links and `..`
    stay inside the root, as HostRoot's walk. OSError as os.open; NoOpenat2 when it cannot be used."""
    fd = open_in_root_errno(root_fd, text, flags)
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd), text)
    return fd


def resolved_in_root(root_fd: int, text: str, real_root: str) -> str | None:
    """The host path `text` resolves to (openat2 RESOLVE_IN_ROOT, then the descriptor's path), None when
    that cannot tell (no openat2, no /proc, a path outside the root's); OSError as HostRoot's walk."""
    try:
        fd = open_in_root_errno(root_fd, text, PATH_FLAGS)
    except NoOpenat2:
        return None
    if fd < 0:
        raise OSError(-fd, os.strerror(-fd), text)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    finally:
        os.close(fd)
    if real == real_root:
        return "/"
    if real.startswith(real_root + "/") and not real.endswith(" (deleted)"):
        return real[len(real_root):]
    return None


def openat2_ready() -> bool:
    """Whether reads may use openat2 (tried once per process, on the first round's root)."""
    return USE_OPENAT2 and bool(_openat2_state) and _openat2_state[0] is not None


class DirTable:
    """The round's directory descriptors, by resolved host path and by the host path a probe asked for."""

    def __init__(self, real_root: str) -> None:
        self.fds: list[int] = []
        weakref.finalize(self, _close_all, self.fds)
        fd = os.open(real_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(fd)
        if not _openat2_state:
            _openat2_init(fd)
        self.root: Dir = ("/", fd)
        # "resolved parent/name" -> the directory it leads to (for a link: its target's directory)
        self.by_key: dict[str, Dir] = {"/": self.root}
        self.by_text: dict[str, Dir] = {}  # a directory path as a probe wrote it -> its directory
        self.missing: dict[str, int] = {}  # "resolved parent/name" that is no directory -> errno

    def walk(self, base: Dir, parts: list[str], links: int) -> Dir:
        """The directory `parts` (no "" or ".") lead to from `base`; OSError as the kernel would raise."""
        cur = base
        for part in parts:
            if part == "..":
                cur = self.parent(cur, links)
                continue
            real = cur[0]
            key = "/" + part if real == "/" else real + "/" + part
            nxt = self.by_key.get(key)
            if nxt is None:
                nxt = self.child(cur, part, key, links)
            cur = nxt
        return cur

    def parent(self, cur: Dir, links: int) -> Dir:
        real = cur[0]
        if real == "/":
            return self.root  # `..` stops at the host root
        up = real.rsplit("/", 1)[0] or "/"
        hit = self.by_key.get(up)
        return hit if hit is not None else self.walk(self.root, components(up), links)

    def child(self, cur: Dir, part: str, key: str, links: int) -> Dir:
        gone = self.missing.get(key)
        if gone is not None:  # asked before in this round: not a directory (ENOENT, ENOTDIR)
            raise OSError(gone, os.strerror(gone), part)
        if len(self.fds) >= MAX_HELD_DIRS:
            raise Overflow
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=cur[1])
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                if exc.errno == errno.ENOENT:
                    self.missing[key] = exc.errno
                raise
            try:
                nxt = self.follow(cur, part, links, exc)
            except OSError as err:
                if err is exc:  # a file, not a link
                    self.missing[key] = errno.ENOTDIR
                raise
        else:
            self.fds.append(fd)
            nxt = (key, fd)
        self.by_key[key] = nxt
        return nxt

    def follow(self, cur: Dir, part: str, links: int, exc: OSError) -> Dir:
        """The directory the link `part` of `cur` leads to; `exc` again when `part` is not a link."""
        try:
            target = os.readlink(part, dir_fd=cur[1])
        except OSError:
            raise exc from None  # not a link (a file where a directory was asked): the open's error
        if links >= MAX_SYMLINKS:
            raise Loop
        start = self.root if target.startswith("/") else cur
        return self.walk(start, components(target), links + 1)

    def directory(self, text: str, depth: int = 0) -> Dir:
        """The directory host path `text` leads to, through the directory of its parent text (so a
        sibling costs one step, not a walk from the root)."""
        hit = self.by_text.get(text)
        if hit is None:
            parent, _, last = text.rpartition("/")
            if not parent or last in ("", ".", "..") or depth > 32:
                hit = self.walk(self.root, components(text), 0)
            else:
                hit = self.walk(self.directory(parent, depth + 1), [last], 0)
            self.by_text[text] = hit
        return hit

    def final(self, text: str) -> tuple[Dir, str]:
        """(directory, name) of host path `text` with the directory resolved; name may be "." or a link."""
        text = text.rstrip("/")
        parent, _, name = text.rpartition("/")
        d = self.directory(parent)
        if name in ("", "."):
            return d, "."
        if name == "..":
            return self.parent(d, 0), "."
        return d, name

    def open(self, text: str, flags: int) -> int:
        """A descriptor for host path `text` opened with `flags` (O_NOFOLLOW added); links followed as chroot."""
        try:
            d, name = self.final(text)
            links = 0
            while True:
                try:
                    return os.open(name, flags | os.O_NOFOLLOW, dir_fd=d[1])
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or name == ".":
                        raise
                    d, name = self.target(d, name, links, exc)
                    links += 1
        except Loop:
            raise OSError(errno.ELOOP, f"{text}: more than {MAX_SYMLINKS} symbolic links") from None

    def target(self, d: Dir, name: str, links: int, exc: OSError) -> tuple[Dir, str]:
        """(directory, name) the link `name` in `d` points at; `exc` again when it is not a link."""
        try:
            target = os.readlink(name, dir_fd=d[1])
        except OSError:
            raise exc from None
        if links >= MAX_SYMLINKS:
            raise Loop
        start = self.root if target.startswith("/") else d
        parts = components(target)
        if not parts:
            return start, "."
        d = self.walk(start, parts[:-1], links + 1)
        last = parts[-1]
        if last == "..":
            return self.parent(d, links + 1), "."
        return d, last

    def lstat_final(self, text: str) -> tuple[os.stat_result, Dir, str]:
        """stat of what host path `text` resolves to (links followed as chroot), with its place."""
        try:
            d, name = self.final(text)
            links = 0
            while True:
                st = os.stat(name, dir_fd=d[1], follow_symlinks=False)
                if not stat_mod.S_ISLNK(st.st_mode):
                    return st, d, name
                d, name = self.target(d, name, links, OSError(errno.EINVAL, "not a link"))
                links += 1
        except Loop:
            raise OSError(errno.ELOOP, f"{text}: more than {MAX_SYMLINKS} symbolic links") from None

    def host_path(self, text: str, real_root: str) -> str:
        """The host path `text` resolves to, strictly (OSError when it does not): openat2 in the root and
        /proc/self/fd's name of what it found, else lstat_final's walk; Overflow as the walk raises it."""
        if openat2_ready():
            found = resolved_in_root(self.root[1], text, real_root)
            if found is not None:
                return found
        _, d, name = self.lstat_final(text)
        if name == ".":
            return d[0]
        return "/" + name if d[0] == "/" else d[0] + "/" + name
