"""New registrations a second, over the last second: what fleet_leases.grant_ttl counts against the heartbeat budget
(`aggregator --max-heartbeats-per-second`) while a registration burst builds the fleet.

Counted in SLOTS buckets of RATE_WINDOW / SLOTS seconds each, so the memory is a few integers whatever the rate (a
registrant flooding new names costs nothing here; --max-registrations bounds the leases themselves). The window
moves by whole buckets: an event counts for RATE_WINDOW - RATE_WINDOW / SLOTS to RATE_WINDOW seconds, so a lone
registration reads as about one a second for about a second, and a quiet second reads 0 exactly. Hand-written:
a dozen lines; a metrics library's rate (an exponentially decaying one) never reads 0 again.
"""

from __future__ import annotations

RATE_WINDOW = 1.0  # s
SLOTS = 4


class RegistrationRate:
    """Events a second over the last `window` seconds (module doc). Not thread-safe: add() under the caller's lock;
    per_second() may read without it (an estimate: an add() racing it counts or not)."""

    __slots__ = ("_counts", "_epochs", "_width", "window")

    def __init__(self, window: float = RATE_WINDOW, slots: int = SLOTS) -> None:
        """window: s, > 0; slots: buckets, >= 1 (ValueError otherwise)."""
        if not window > 0 or slots < 1:
            raise ValueError(f"window must be > 0 s and slots >= 1, got {window!r}, {slots!r}")
        self.window = window
        self._width = window / slots
        self._counts = [0] * slots
        self._epochs = [-1] * slots  # the bucket number (now // width) each slot counts

    def add(self, now: float) -> None:
        """Count one event at `now` (s, a monotonic clock)."""
        epoch = int(now // self._width)
        slot = epoch % len(self._counts)
        if self._epochs[slot] != epoch:
            self._epochs[slot], self._counts[slot] = epoch, 0
        self._counts[slot] += 1

    def per_second(self, now: float) -> float:
        """Events a second over the window ending at `now` (s, the clock add() was given): its count / window."""
        epoch = int(now // self._width)
        oldest = epoch - len(self._counts)
        total = sum(c for c, e in zip(self._counts, self._epochs, strict=True) if oldest < e <= epoch)
        return total / self.window
