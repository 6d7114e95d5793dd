"""The directories a probe round reads several files from, held open once for the round.

A round asks for many files of one directory (ten attributes of each PCI function, seventeen DMI
fields, the sysctl settings of /proc/sys/kernel) and for several files of directories the host does
not have (DMI on a VM, /proc/sys/vm in a tree without it). Resolving each whole path again costs a
path walk (and, under a host root other than `/`, an openat2 call: C helper or ctypes) per file; a
missing file costs a failed lookup and, at `/`, an OSError.

So the HOLD_AT-th (second; FIRST_HOLD_AT-th, third, in a round without a hint, below) time a directory is
asked for (one asked for fewer times costs nothing extra:
holding costs an open and a close, more than a whole-path open), it is opened once, as an O_PATH
descriptor, resolved exactly as a whole path would be: openat2(RESOLVE_IN_ROOT) under a host root
(probes/root_resolve.py), the kernel's own resolution at `/` (chroot's there). Its files are then
opened by name relative to that descriptor: under a host root with O_NOFOLLOW, so a name that is a
link (ELOOP) is resolved as a whole path again, never followed from here; at `/` links are followed
as the kernel follows them in a whole path. A directory that does not resolve (ENOENT, ENOTDIR) has
no file either: every later path in it is answered "missing" without a system call. Answers are
HostRoot's (tests/test_probe_runner.py on every path of the fixture trees, tests/test_probe_round_io.py
at `/`). Bounded: at most root_resolve.MAX_HELD_DIRS descriptors per round, closed when the round's
host is collected (weakref.finalize), as the round's other descriptors.

A long-lived runner's next round knows which directories the last one asked for HOLD_AT times or more
(`hint`, probes/runner.py: the previous round's held and missing directories): those are held the first
time they are asked for, so their first file is opened by name too instead of through a whole-path
resolution (openat2 under a host root). The hint is only about when to hold: a
directory is held exactly as without it (the same resolution, fresh each round, never a descriptor of an
earlier round), so what a read answers and what it is confined to do not change.

Hand-written: a per-round cache of directory descriptors with chroot semantics has no library.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import weakref

from nodecompat.hostroot import _OPEN_FLAGS
from nodecompat.probes import root_resolve
from nodecompat.probes.root_resolve import PATH_FLAGS, NoOpenat2, _close_all

MISSING = -1  # the directory does not resolve: no path in it does
SLOW = -2  # not held (unreadable, over the bound, no openat2): resolve each whole path
# A directory is held the second time it is asked for (holding costs an open and a close, so not the
# first: 69 of the 108 directories a round asks for on h100-server are asked for once). Measured, cold
# full rounds alternated (3, 2, 1), 3 runs: h100-server 2-3% less CPU at 2 than at 3, / 3-5%; 1 no better.
HOLD_AT = 2
# A round without a hint (a runner's first, or probe_once's only one) holds a directory the third time it is
# asked for: it cannot know yet which directories are asked for again, and a directory asked for twice costs
# two whole-path opens, less than a hold, a name open and a close. The directories asked for HOLD_AT times
# are still its hint for the next round (worth_holding), so a steady round holds what it held before.
FIRST_HOLD_AT = 3
_FIRST = -3  # asked for once; -4, -5 ... asked for more often, not held yet
_ASKED_ENOUGH = _FIRST - (HOLD_AT - 1)  # not held yet, asked for HOLD_AT times or more
_ROOT_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = _OPEN_FLAGS  # under a host root: O_NOFOLLOW, a link is resolved as a whole path
_ROOT_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # at `/`: the kernel follows links as chroot


class HeldParents:
    """Host directory path (as probes write it) -> held O_PATH descriptor, MISSING, SLOW, or how often it
    was asked for while not held yet (_FIRST, _FIRST - 1, ...)."""

    __slots__ = ("__weakref__", "beneath", "fds", "file_flags", "hint", "hold_at", "kept", "open_dir", "root_fd",
                 "state")

    def __init__(self, root_fd: int | None, hint: frozenset[str] = frozenset()) -> None:
        """root_fd: the host root's descriptor (openat2 resolves in it), None for the host root `/`;
        hint: host directories to hold the first time they are asked for (last round's, worth holding)."""
        self.hint = hint
        self.hold_at = HOLD_AT if hint else FIRST_HOLD_AT  # the request at which a directory is held
        self.root_fd = root_fd
        self.file_flags = _FILE_FLAGS if root_fd is not None else _ROOT_FILE_FLAGS  # a file's open(2) flags
        self.open_dir = None if root_fd is None else root_resolve.opener(root_fd, PATH_FLAGS | os.O_DIRECTORY)
        self.state: dict[str, int] = {}
        self.kept: list[str] = []  # the directories held, found missing or asked for HOLD_AT times (worth_holding)
        self.fds: list[int] = []
        self.beneath: dict[str, int] = {}  # a confining directory -> its descriptor or -1 (round_paths._beneath)
        weakref.finalize(self, _close_all, self.fds)

    def lookup(self, parent: str) -> int:
        """The held descriptor (>= 0) of host directory `parent` (an absolute host path), MISSING when it
        does not resolve, else SLOW (the caller resolves the whole path itself)."""
        st = self.state.get(parent)
        if st is None:
            if parent in self.hint:  # asked for often last round: held at once
                st = self.state[parent] = self._hold(parent)
                if st >= 0 or st == MISSING:
                    self.kept.append(parent)
                return st
            self.state[parent] = _FIRST
            return SLOW
        if st > _FIRST:
            return st
        asked = _FIRST - st + 2  # this request's number
        if asked < self.hold_at:  # not held yet
            self.state[parent] = st - 1
            if asked == HOLD_AT:  # worth holding at once next round (held here at hold_at)
                self.kept.append(parent)
            return SLOW
        st = self.state[parent] = self._hold(parent)
        if (st >= 0 or st == MISSING) and asked == HOLD_AT:  # (at a later request it is in kept already)
            self.kept.append(parent)
        return st

    def _hold(self, parent: str) -> int:
        if len(self.fds) >= root_resolve.MAX_HELD_DIRS:
            return SLOW
        if self.root_fd is None:
            try:
                fd = os.open(parent, _ROOT_DIR_FLAGS)
            except OSError as exc:
                return MISSING if exc.errno in (errno.ENOENT, errno.ENOTDIR) else SLOW
        else:
            if self.open_dir is None:
                return SLOW
            try:
                fd = self.open_dir(parent)
            except (NoOpenat2, ValueError):
                return SLOW
            if fd < 0:
                return MISSING if -fd in (errno.ENOENT, errno.ENOTDIR) else SLOW
        self.fds.append(fd)
        return fd


    def open_file(self, text: str) -> int:
        """A descriptor of host file `text` opened through its held directory (flags as a round's read);
        MISSING when it is not there (or unreadable), SLOW when the caller must resolve the whole path
        (directory not held, a link under a host root)."""
        parts = split(text)
        if parts is None:
            return SLOW
        d = self.lookup(parts[0])
        if d < 0:
            return d
        try:
            return os.open(parts[1], self.file_flags, dir_fd=d)
        except OSError as exc:
            if self.root_fd is not None and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                return SLOW  # a link: resolved as a whole path, never followed from here
            return MISSING

    def stat_file(self, text: str) -> os.stat_result | int | None:
        """stat of host path `text` (links followed as the host root's) through its held directory;
        None when it is not there, SLOW when the caller must resolve the whole path."""
        parts = split(text)
        if parts is None:
            return SLOW
        d = self.lookup(parts[0])
        if d < 0:
            return None if d == MISSING else d
        try:
            st = os.stat(parts[1], dir_fd=d, follow_symlinks=self.root_fd is None)
        except OSError:
            return None
        return SLOW if stat_mod.S_ISLNK(st.st_mode) else st

    def link_name(self, text: str) -> str | int | None:
        """Basename of the target of link `text` read through its held directory; None when it is no
        link, SLOW when the caller must resolve the directory itself."""
        parts = split(text)
        if parts is None:
            return SLOW
        d = self.lookup(parts[0])
        if d < 0:
            return None if d == MISSING else d
        try:
            return os.path.basename(os.readlink(parts[1], dir_fd=d))
        except OSError:
            return None


def worth_holding(parents: list[HeldParents | None]) -> frozenset[str]:
    """The directories a finished round (its RoundHost._parents: [] or [held or None]) asked for HOLD_AT
    times or more (held, found missing, or not held yet in a round holding at FIRST_HOLD_AT): the next
    round's hint. At most MAX_HELD_DIRS."""
    held = parents[0] if parents else None
    if held is None:
        return frozenset()
    kept, hint = held.kept, held.hint
    if len(kept) == len(hint) and hint.issuperset(kept):  # a steady round: the hint again, not rebuilt
        return hint
    state = held.state.copy()  # one C call: a probe still running (hung) may add to it meanwhile
    keep = [d for d, v in state.items() if v >= 0 or v == MISSING or v <= _ASKED_ENOUGH]
    return frozenset(keep[: root_resolve.MAX_HELD_DIRS])


def split(text: str) -> tuple[str, str] | None:
    """(parent, name) of an absolute host path whose last part is a plain name, else None (the root's
    own files, a trailing `/`, `.` or `..`: the whole path is resolved)."""
    parent, _, name = text.rpartition("/")
    if not parent or not name or name == "." or name == ".." or text[0] != "/":
        return None
    return parent, name
