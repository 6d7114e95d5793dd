"""Parsed specs kept by bytes, not by count: callers validate the same few specs over and over (parsing is
pure Python and dominates a call), but a caller sending many distinct specs must not grow the daemon.

Each entry is charged an estimate of what it keeps alive: its text (the key), the spec model (measured
with tracemalloc at about 10 bytes per byte of text for real specs; charged 16) and the RE2 memory its
compiled regexes may use (Spec.regex_bytes, the sum of their max_mem budgets, which bounds program and
DFA caches). Least recently used entries go first. Specs that fail to parse are not kept.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from nodecompat.engine.limits import MAX_PARSE_CACHE_BYTES

if TYPE_CHECKING:
    from nodecompat.engine.spec import Spec

_MODEL_BYTES_PER_TEXT_BYTE = 16
_ENTRY_OVERHEAD = 4096
# Operators (and tests) may lower or raise the cap: NODECOMPAT_PARSE_CACHE_BYTES (0 turns caching off).
CAP_ENV = "NODECOMPAT_PARSE_CACHE_BYTES"
_CAP_CEILING = 1 << 30


def configured_cap() -> int:
    """MAX_PARSE_CACHE_BYTES, or CAP_ENV when set to a number (clamped to 0..1 GiB)."""
    try:
        return max(0, min(int(os.environ[CAP_ENV]), _CAP_CEILING))
    except (KeyError, ValueError):
        return MAX_PARSE_CACHE_BYTES


def spec_cost(text: str, spec: Spec) -> int:
    """Estimated bytes an entry keeps alive (see the module docstring)."""
    return _ENTRY_OVERHEAD + (1 + _MODEL_BYTES_PER_TEXT_BYTE) * len(text) + spec.regex_bytes


class ParseCache:
    """get_or_parse(text, nfd_compat) through `parse`, keeping at most `max_bytes` of estimated cost."""

    def __init__(self, parse: Callable[..., Spec], max_bytes: int | None = None) -> None:
        self._parse = parse
        self.max_bytes = configured_cap() if max_bytes is None else max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, bool], tuple[Spec, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, text: str, nfd_compat: bool, deadline: float | None = None) -> Spec:
        """The parsed spec; `deadline` (time.monotonic()) is passed to the parser on a miss."""
        key = (text, nfd_compat)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        # outside the lock: parsing takes time
        spec = self._parse(text, nfd_compat) if deadline is None else self._parse(text, nfd_compat, deadline)
        cost = spec_cost(text, spec)
        if cost > self.max_bytes:
            return spec
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (spec, cost)
                self.bytes += cost
            while self.bytes > self.max_bytes and self._entries:
                _, (_, old) = self._entries.popitem(last=False)
                self.bytes -= old
        return spec

    def __len__(self) -> int:
        return len(self._entries)
