"""Bounded whole-file reads of a probe round, past its first read (probes/round_host.py makes that one
inline): the rest of a file read to its end, at most MAX_READ_BYTES, and files without offsets.

A round reads a file with pread: a page at offset 0, then one byte to find the end (most host files
are shorter than a page). /proc/sys zero-fills a kernel buffer of the size asked on every read, so a
64 KiB read cost ~12 us more per file than a page; a FIFO, pipe or terminal has no offsets, so pread
refuses it (ESPIPE) and read_stream decides, without an fstat per file. Hand-written: a few lines of
os.pread that must keep HostRoot.open_bytes's answers (bounded, FIFOs and sockets refused).
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
from collections.abc import Callable

from nodecompat.hostroot import MAX_READ_BYTES

CHUNK = 1 << 16  # bytes asked per read past the first page
FIRST_READ = 4096  # bytes asked by a file's first read (most host files a round reads are shorter)


def read_whole(fd: int) -> bytes | None:
    """A round's whole read of an open file, then closed: pread a page at offset 0, then one byte to find
    the end, the rest by read_rest; ESPIPE (no offsets): read_stream. None when a read fails or the file
    is over MAX_READ_BYTES (HostRoot.read_bytes's answers)."""
    try:
        data = os.pread(fd, FIRST_READ, 0)
        n = len(data)
        if n < FIRST_READ and (not n or not os.pread(fd, 1, n)):
            return data  # the whole file: the next read found its end
        return read_rest(fd, data)
    except OSError as exc:
        if exc.errno == errno.ESPIPE:
            return read_stream(fd)
        return None
    finally:
        os.close(fd)


def read_rest(fd: int, data: bytes) -> bytes | None:
    """The rest of a file whose first `data` came from pread at offset 0, read to its end (None past
    MAX_READ_BYTES). Sized by fstat when the file says its size (a large disk file in one read); sysfs
    binary attributes hand out a page per read and procfs files say 0: chunks until an empty read."""
    total = len(data)
    size = os.fstat(fd).st_size
    chunks = [data]
    if not size and total >= FIRST_READ:
        # procfs (size 0) past a page: read again from offset 0, 64 KiB at a time, as HostRoot does.
        # Some /proc/sys handlers (proc_dointvec, proc_do_large_bitmap) answer a read at offset 0
        # only: going on at 4096 would cut a longer value there instead of reading it whole.
        chunks, total = [], 0
    want = max(size + 1 - total, CHUNK)  # a disk file's size (+1 to see its end) at once
    return _drain(lambda n, at: os.pread(fd, n, at), chunks, total, want)


def read_stream(fd: int) -> bytes | None:
    """A file without offsets (pread gave ESPIPE): FIFOs and sockets refused (a FIFO's writer could
    keep the round waiting), anything else (a terminal) read to its end as HostRoot does, bounded; None when
    a read fails (a terminal with nothing to read: EAGAIN, the round opens O_NONBLOCK; a hung-up one: EIO),
    as HostRoot.read_bytes: the caller's `except OSError` has already run and would not catch it."""
    try:
        mode = os.fstat(fd).st_mode
        if stat_mod.S_ISFIFO(mode) or stat_mod.S_ISSOCK(mode):
            return None
        return _drain(lambda n, _at: os.read(fd, n), [], 0, CHUNK)
    except OSError:
        return None


def _drain(read: Callable[[int, int], bytes], chunks: list[bytes], total: int, want: int) -> bytes | None:
    """`chunks` (`total` bytes so far) and what read(n, offset) gives until an empty read: asking `want`
    bytes first, then CHUNK (a sysfs binary attribute gives a page per read whatever is asked); None past
    MAX_READ_BYTES (at most one byte more is read); OSError as `read` raises it."""
    while True:
        chunk = read(min(want, MAX_READ_BYTES + 1 - total), total)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > MAX_READ_BYTES:
            return None
        chunks.append(chunk)
        want = CHUNK


def text_of(raw: bytes | None) -> str | None:
    """HostRoot.read_text's decoding: undecodable bytes replaced, universal newlines."""
    if raw is None:
        return None
    text = raw.decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
