"""What a probe derives from text it read, kept between rounds for the same text (issue 11 row (a): a first
round's own Python).

A probe still reads every file every round; only the derivation (a parse, a feature object built from it)
is reused, and only for exactly the same input, so the facts are those a fresh derivation gives. Values are
shared between rounds (as a round's features are: probes/round_merge.py): callers must not change them.
Bounded: at most `max_entries` inputs, each of at most `max_chars` characters (str parts of the key added
up); a longer input is derived every time, never kept; the whole map is cleared when full (inputs of a
host change rarely; a round after a clear derives again). parsecache.py keeps parses by a file's identity
(a stat); this keeps them by the text itself, for files with no useful identity (procfs, sysfs) or read
within a confined directory. Users (entries x characters of input each): cpu and cpu_power listings (8 x 64
KiB each), gpu.driver (16 x 1 KiB), hugepages listings (64 x 4 KiB, 8 x 64 KiB), local files (16 x 16 KiB),
nic listings (8 x 64 KiB) and interfaces (1,024 x 2 KiB), storage listings (8 x 64 KiB) and devices (1,024 x 1
KiB), os-release (4 x 16 KiB): at most ~6 MiB of input text in all, with what was derived from it; sysfs_pci
keeps PCI devices apart (512 x 1 KiB, each with its last gpu.device input of <= 4 KiB).
Hand-written: functools.lru_cache bounds entries, not their size, and keeps no value that the caller decides
not to keep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


def _chars(key: Hashable) -> int:
    if isinstance(key, str):
        return len(key)
    if isinstance(key, tuple):
        return sum(_chars(k) for k in key)
    return 0


class TextKept(Generic[T]):
    """A bounded map from an input (a str or a tuple of str / None / small values) to what was derived."""

    def __init__(self, max_entries: int = 16, max_chars: int = 64 << 10) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._map: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value kept for `key`, else make() (kept when `key` is within the bounds)."""
        got = self._map.get(key, _MISS)
        if got is not _MISS:
            return got  # type: ignore[return-value]
        value = make()
        self.put(key, value)
        return value

    def peek(self, key: Hashable) -> T | None:
        """The value kept for `key`, or None."""
        return self._map.get(key)

    def put(self, key: Hashable, value: T) -> None:
        """Keep `value` for `key` when `key` is within the bounds (else nothing is kept)."""
        if _chars(key) <= self.max_chars:
            with self._lock:
                if len(self._map) >= self.max_entries:
                    self._map.clear()
                self._map[key] = value

    def __len__(self) -> int:
        return len(self._map)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()


_MISS = object()
