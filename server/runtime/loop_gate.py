"""When a call fast path (server/runtime/runtime.py, e.g. RegisterNode's renewals) may answer on the event loop.

A call fast path takes no worker and no admission slot, so nothing else bounds how much of the loop a flood
of such calls takes. The bound is the loop's own lag: a probe callback queued on the loop measures how long
it waited to run (the loop's backlog: every ready callback before it, gRPC's completions included); while
the last probe waited past `limit` seconds the fast paths decline and the calls take the usual way, where
admission refuses what is past --max-concurrent-calls (RESOURCE_EXHAUSTED), so a flood costs what it cost
before the fast path and Health (a coroutine on the same loop) keeps its turn. The probe runs once per loop
iteration at most, and one iteration may hold hundreds of calls that arrived together, so at most `burst`
fast-path answers are let in between two probes (the rest of such a burst takes the usual way too). One
probe at a time, started only by a fast-path call: an idle server runs nothing. Hand-written: asyncio has
no lag metric, and a periodic timer would wake an idle server.
"""

from __future__ import annotations

import asyncio

LOOP_LAG_LIMIT = 0.1  # s a callback queued on the loop may wait before call fast paths decline
LOOP_BURST = 64  # fast-path answers let in between two probes (one loop iteration at most)


class LoopGate:
    """Per server loop; every method on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float = LOOP_LAG_LIMIT, burst: int = LOOP_BURST) -> None:
        self.loop = loop
        self.limit = limit
        self.burst = burst
        self._let_in = 0  # fast paths let in since the last probe ran
        self.answers = 0  # calls answered by a call fast path (for tests and the bench)
        self.declined = 0  # calls sent the usual way because the loop lagged
        self._lag = 0.0  # s the last probe waited
        self._probing = False

    def open(self) -> bool:
        """Whether a call fast path may answer now (the last probe waited at most `limit`, and fewer than
        `burst` were let in since it ran); counts a refusal in `declined` and starts the next probe if none
        is queued."""
        if not self._probing:
            self._probing = True
            self.loop.call_soon(self._probed, self.loop.time())
        if self._lag > self.limit or self._let_in >= self.burst:
            self.declined += 1
            return False
        self._let_in += 1
        return True

    def _probed(self, queued: float) -> None:
        self._lag = self.loop.time() - queued
        self._probing = False
        self._let_in = 0
