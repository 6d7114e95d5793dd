"""Answers already computed for this probe round: (spec digest, tags, NFD mode, ...) -> response bytes.

Callers validate the same few specs over and over (one image, many calls, a fleet asking every node);
the answer for a spec only changes when the node's facts do, i.e. with the probe round. So the daemon
keeps the serialized answer per key for the life of the round it was computed on, and serves those
bytes as they are. A new round (interval, hot-plug, GetFeatures refresh) empties the cache: `get`
and `put` name the round they belong to, and the first call that names another round clears it.

Bounded in bytes, least recently used first out; an answer bigger than `max_entry_bytes` is not kept.
A key may also be bytes (the daemon keys inline-spec answers by the request message as received, too, so
that a repeated call is answered without parsing it): such a key is charged its length besides.
Hand-written: cachetools' LRU has no per-round invalidation and keys by value rather than by size;
this is forty lines with one lock.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence

MAX_BYTES = 16 << 20  # all kept answers together
MAX_ENTRY_BYTES = 1 << 20  # one answer (larger ones are computed each time)
ENTRY_OVERHEAD = 256  # bytes charged per entry for the key and bookkeeping


def spec_key(text: str, tags: Sequence[str], nfd_mode: bool, *extra: Hashable) -> tuple[Hashable, ...]:
    """The cache key of one question: SHA-256 of the spec text, the tags as given (their order shows in
    a warning), NFD mode, and whatever else ends up in the answer (`extra`, e.g. where the spec came from)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return (digest, tuple(tags), bool(nfd_mode), *extra)


class VerdictCache:
    """Thread-safe LRU of answer bytes for one probe round at a time."""

    def __init__(self, max_bytes: int = MAX_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._round: object | None = None
        self.size = 0  # bytes charged now
        self.hits = 0
        self.misses = 0

    def _use_round(self, rnd: object) -> None:
        if self._round is not rnd:
            self._entries.clear()
            self.size = 0
            self._round = rnd

    @staticmethod
    def _cost(key: Hashable, value: bytes) -> int:
        return len(value) + ENTRY_OVERHEAD + (len(key) if isinstance(key, bytes) else 0)

    def get(self, rnd: object, key: Hashable) -> bytes | None:
        """The answer kept for `key` on round `rnd`, or None."""
        with self._lock:
            self._use_round(rnd)
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, rnd: object, key: Hashable, value: bytes) -> None:
        """Keep `value` for `key` on round `rnd` (ignored when too big). Entries of any other round are
        dropped first, so an answer is only ever served for the round it was computed on."""
        cost = self._cost(key, value)
        if cost > self.max_entry_bytes:
            return
        with self._lock:
            self._use_round(rnd)
            old = self._entries.pop(key, None)
            if old is not None:
                self.size -= self._cost(key, old)
            self._entries[key] = value
            self.size += cost
            while self.size > self.max_bytes:
                gone, dropped = self._entries.popitem(last=False)
                self.size -= self._cost(gone, dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.size = 0
            self._round = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
