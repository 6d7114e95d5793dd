"""A probe round run on its caller's own thread, with a watchdog thread for hang isolation.

ProbeRunner.run() hands a round to a worker thread and waits for it (two thread wake-ups a round: on
two shared cores, most of a steady round's cost beyond its reads, issue 11). A thread that exists only
to probe (the daemon's refresh loop, server/node/feature_cache.py) can instead run the round's calls
itself (ProbeRunner.run_here): nothing is handed over and nobody is woken. Hang isolation is kept by
one process-wide watchdog thread that never waits on a round: it sleeps until the running call's
deadline (started + the probe's timeout), or, while no call runs, for the shortest probe timeout of
what it watches, so it wakes about once per probe timeout (10 s by default), not once per round, and
still sees every call the moment its deadline passes (a call running at one of its wake-ups is
watched to its deadline; one started after it is seen at the next, at most one timeout later, before
its deadline). A call past its deadline is abandoned with its thread (Python cannot stop a thread
stuck in a system call): the thread is marked so that it runs nothing more and whatever it returns
is dropped, and the calls not started yet are handed, from the watchdog's thread, to the runner's
`on_hang` (the loop starts a new thread that finishes the round and publishes it, then carries on).

Bound on threads: a probe whose abandoned call has not returned is not started again (its status says
"still hung"; probes/runner.py), so a runner has at most one stuck thread per probe, as with the
worker threads of run(); plus the watchdog, one per process.

Hand-written: the standard library has no timer that can watch a running call without a wake-up of
its own per round (threading.Timer is one thread per timer).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from nodecompat import tracing
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe
from nodecompat.probes.memo_replay import ReplayContext
from nodecompat.probes.runner_worker import _Call, _discover, _memoized

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT = Probe.timeout


def seconds(value: object) -> float:
    """`value` as a timeout in seconds when it is a positive finite number, else Probe's default (10 s)."""
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TIMEOUT
    return t if 0 < t < float("inf") else DEFAULT_TIMEOUT


class HereCalls:
    """The calls of rounds run on one thread, watched by the watchdog; abandoned (never reused) once a
    call hangs. One per runner at a time (a new one after an abandonment)."""

    __slots__ = ("__weakref__", "abandoned", "calls", "claim", "current", "idle_period", "on_hang", "override")

    def __init__(self, idle_period: float, override: float | None) -> None:
        """idle_period: seconds between the watchdog's looks while no call runs (the shortest timeout
        of the runner's probes); override: the runner's timeout for every probe (None: each its own)."""
        self.idle_period = max(0.001, idle_period)
        self.override = override
        # taken (uncontended but for a hang) to start or finish a call, and by the watchdog to abandon:
        # no call is started by a thread the watchdog has abandoned and handed the rest on from
        self.claim = threading.Lock()
        self.calls: list[_Call] = []
        self.current: _Call | None = None
        self.abandoned = False
        self.on_hang: Callable[[list[_Call]], None] | None = None

    def timeout(self, call: _Call) -> float:
        """The call's timeout in seconds: the runner's override, else the probe's (a plugin's that is not
        a positive number of seconds: Probe's default, so the watchdog still watches it)."""
        return seconds(self.override if self.override is not None else call.probe.timeout)

    def run(self, calls: list[_Call], host: HostRoot, on_hang: Callable[[list[_Call]], None],
            traced: bool | None = None) -> bool:
        """Run `calls` in order on this thread. True when all ran here; False when the watchdog
        abandoned this thread (a call ran past its timeout): the calls not started were given to
        on_hang(rest), on the watchdog's thread, and this thread must drop the round. traced:
        tracing.loaded() as the round began (None: asked here)."""
        if traced is None:
            traced = tracing.loaded()  # asked once per round, not per probe
        replay: list[ReplayContext] = []  # memo_replay.replay_context of the round's host, at need
        self.calls, self.on_hang = calls, on_hang
        claim = self.claim
        # One critical section between two calls (the last one's end, the next one's start) and one clock
        # reading: the time a call finished is the time the next one started.
        claim.acquire()
        held = True
        try:
            now = time.monotonic()
            for call in calls:
                if self.abandoned:  # abandoned in the last call: the rest went to on_hang
                    return False
                self.current = call
                call.started = now
                claim.release()
                held = False
                if traced:
                    _discover(call, host, True, replay)
                else:  # _discover without a span, one call less (nodecompat/tracing.py: none can be recorded)
                    try:
                        _memoized(call, host, replay)
                    except BaseException as exc:  # isolate everything, including SystemExit from a plugin
                        call.error = exc
                now = time.monotonic()
                claim.acquire()
                held = True
                call.finished = now
                self.current = None
            return not self.abandoned
        finally:
            if held:
                claim.release()
            if not self.abandoned:
                self.calls, self.on_hang = [], None


class _Watchdog:
    """The process's watchdog thread over every watched HereCalls (weakly held)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watched: weakref.WeakSet[HereCalls] = weakref.WeakSet()
        self.wake = threading.Event()  # set by watch(): a new set of calls may need an earlier look
        self.thread: threading.Thread | None = None
        self.next_look = 0.0  # monotonic time of the thread's next look (set before it sleeps)

    def watch(self, here: HereCalls) -> None:
        """Watch `here`'s calls from now on. The thread is woken only when its next look is later than
        one idle period of `here` from now (a call `here` starts must be seen before its deadline): a
        runner's first round (a new HereCalls each) does not wake it while it looks often enough anyway
        (a wake-up is a context switch on each side, ~5% of a first round's CPU)."""
        with self.lock:
            self.watched.add(here)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="probe-watchdog", daemon=True)
                self.next_look = 0.0
                self.thread.start()
                return
            if self.next_look <= time.monotonic() + here.idle_period:
                return  # it looks soon enough: once per idle period is all a call needs (module docstring)
        self.wake.set()

    def unwatch(self, here: HereCalls) -> None:
        with self.lock:
            self.watched.discard(here)

    def _loop(self) -> None:
        while True:
            self.wake.clear()
            wake = self._scan()
            with self.lock:  # a HereCalls watched during the scan is in `watched` or sees this time
                wake = min(wake, time.monotonic() + min((h.idle_period for h in self.watched), default=3600.0))
                self.next_look = wake
            self.wake.wait(max(0.0, wake - time.monotonic()))

    def _scan(self) -> float:
        """Abandon each watched call past its deadline; the time of the next look (monotonic seconds)."""
        with self.lock:
            watched = list(self.watched)
        now = time.monotonic()
        wake = now + min((h.idle_period for h in watched), default=3600.0)
        for here in watched:
            cur = here.current
            started = cur.started if cur is not None else None
            if cur is None or started is None or cur.finished is not None:
                continue
            deadline = started + here.timeout(cur)
            if deadline > now:
                wake = min(wake, deadline)
            elif not self._abandon(here, cur):
                wake = now  # it returned as its deadline passed: look again at once
        return wake

    def _abandon(self, here: HereCalls, cur: _Call) -> bool:
        """Abandon `here`'s thread in `cur` (past its deadline) and hand the calls not started to its
        on_hang; False when `cur` returned meanwhile (not hung)."""
        with here.claim:
            if cur.finished is not None or here.current is not cur:
                return False
            here.abandoned = True
            cur.abandoned = True
            i = here.calls.index(cur)
            rest = [c for c in here.calls[i + 1 :] if c.started is None]
            on_hang = here.on_hang
            here.calls, here.on_hang = [], None
        self.unwatch(here)
        if on_hang is not None:
            try:
                on_hang(rest)
            except Exception:  # the watchdog must keep watching
                log.exception("probe round: handing on the calls after a hung one failed")
        return True


WATCHDOG = _Watchdog()
