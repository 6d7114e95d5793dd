"""Deadlines of the calls waiting for their request message on one event loop, without a timer per call.

server/runtime/runtime.py gives every work call `request_timeout` for its request message (and the caller's
half-close) to arrive. One asyncio.timeout per call costs a Timeout object, a TimerHandle pushed on the
loop's heap and cancelled again, and the task lookups around it: ~12 Python calls, measured at ~2% of a
cached ValidateImage's rate (issue 11: the cached answer within 0.8 of an empty RPC). Here a call's task is
put in a dict with its deadline and taken out when its reads are done; one timer for the whole loop,
armed at the earliest deadline it knows of, cancels the tasks whose deadline has passed, as asyncio.timeout
would (Task.cancel, told apart from any other cancellation by `expired`). At a steady rate of calls, every
deadline is the call's start plus the same timeout, so the timer fires about once per timeout.

Hand-written: asyncio has no shared-deadline primitive; this is asyncio.timeout's mechanism (cancel the
task, uncancel it, report a timeout) with one timer for all the calls of a loop. Loop thread only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["ReadDeadlines"]


class ReadDeadlines:
    """Deadlines (time.monotonic() seconds, the clock of asyncio's default loop) of tasks on `loop`.

    Use from the loop's thread: enter(task, deadline) before the reads, leave(task) after them (in a
    finally); when the reads raise CancelledError, expired(task) tells whether the deadline did it (the
    task's cancellation is then withdrawn, as asyncio.timeout does before raising TimeoutError).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiting: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def enter(self, task: asyncio.Task[Any], deadline: float) -> None:
        """Cancel `task` at `deadline` (time.monotonic()) unless leave(task) comes first."""
        self._waiting[task] = deadline
        if self._timer is None:
            self._arm(deadline)
        elif deadline < self._timer_at:  # e.g. a caller's deadline shorter than request_timeout
            self._timer.cancel()
            self._arm(deadline)

    def leave(self, task: asyncio.Task[Any]) -> None:
        """The task's reads are over (done, failed or cancelled): its deadline no longer applies. Call it
        after expired(task) was asked (it forgets the expiry too)."""
        self._waiting.pop(task, None)
        self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """After a CancelledError in the task: True (and the cancellation withdrawn) if its deadline caused it."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    def __len__(self) -> int:
        return len(self._waiting)

    def _arm(self, when: float) -> None:
        self._timer_at = when
        # call_at takes the loop's clock; asyncio's default loops use time.monotonic(), as `when` does
        self._timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = time.monotonic()
        earliest = float("inf")
        for task, deadline in list(self._waiting.items()):
            if deadline <= now:
                del self._waiting[task]
                if not task.done():
                    self._expired.add(task)
                    task.cancel()
            elif deadline < earliest:
                earliest = deadline
        if earliest != float("inf"):
            self._arm(earliest)
