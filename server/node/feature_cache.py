"""The daemon's view of the node: the latest probe round, refreshed on an interval and on request.

Probing reads hundreds of sysfs files, so RPCs serve the cached round. Concurrent refresh requests are
coalesced: a caller that asks while a round is running waits for that round instead of starting
another, so a burst of `refresh=true` calls costs one probe round; and callers start at most one round
per `min_refresh_interval` on average (a token bucket allowing REFRESH_BURST in a row): a refresh past
that gets the last round, so 73 refresh calls a second from one client cost a round every interval.

The refresh loop's rounds (the interval's, a hot-plug poke's) run on the loop's own thread, with no
hand-off to a probe worker (ProbeRunner.run_here): when a probe call hangs, the runner's watchdog
abandons that thread and a new loop thread finishes the round (the probe timed out), publishes it and
carries on; the abandoned thread publishes nothing when its call returns, and ends. A caller's refresh
(GetFeatures refresh=true) that starts a round runs it through ProbeRunner.run() (a worker thread):
an RPC thread is never abandoned.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from nodecompat.probes.probe_round import ProbeRound

if TYPE_CHECKING:
    from nodecompat.probes.base import Probe

log = logging.getLogger(__name__)

REFRESH_BURST = 4  # caller-requested rounds allowed back to back before min_refresh_interval applies


class RoundSource(Protocol):
    """What the cache needs of a ProbeRunner (server/first_round.StartupRunner is one too)."""

    @property
    def probes(self) -> list[Probe]: ...

    def run(self) -> ProbeRound: ...


class FeatureCache:
    def __init__(self, runner: RoundSource, interval: float = 60.0, min_refresh_interval: float = 0.0) -> None:
        self.runner = runner
        self.interval = interval
        self.min_refresh_interval = min_refresh_interval
        self._tokens = float(REFRESH_BURST)  # caller-requested rounds that may start now
        self._refilled = time.monotonic()
        self.coalesced = 0  # refresh requests answered with a round younger than min_refresh_interval
        self._round: ProbeRound | None = None
        self._cond = threading.Condition()
        self._running = False
        self._generation = 0
        self._failure: BaseException | None = None  # of the last round
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_round: list[Callable[[ProbeRound], None]] = []

    def start(self) -> None:
        """Run the first round and then refresh every `interval` seconds, in a background thread."""
        self._thread = threading.Thread(target=self._loop, name="feature-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self, reason: str = "") -> None:
        """Ask for a refresh soon (e.g. on a hot-plug event), without waiting for it."""
        log.info("refresh requested: %s", reason)
        self._wake.set()

    def _loop(self, resume: Callable[[], ProbeRound | None] | None = None) -> None:
        """The refresh loop: a round now, then every `interval` seconds or when poked. Its rounds run on
        this thread (the runner's run_here: no hand-off to a worker); when a probe call hangs, the
        runner's watchdog abandons this thread and _on_hang starts a new one with `resume`, which
        finishes that round (the hung probe timed out), publishes it and carries on as the loop."""
        if resume is not None:
            try:
                if self._run_and_publish(resume) is None:  # another call of the round hung
                    return
            except Exception:
                if not self._stop.is_set():
                    log.exception("probe round failed")
            self._wake.wait(self.interval)
        while not self._stop.is_set():
            self._wake.clear()  # a poke from here on is answered by this round or the next
            try:
                if self._refresh_here() is None:  # this thread was abandoned in a hung probe call
                    return
            except Exception:  # keep refreshing; the runner already isolates probes
                if not self._stop.is_set():  # a round cut short by stop() is not news
                    log.exception("probe round failed")
            self._wake.wait(self.interval)

    def _on_hang(self, finish: Callable[[], ProbeRound | None]) -> None:
        """The runner's watchdog abandoned the loop's thread in a hung call (on the watchdog's thread):
        a new loop thread finishes the round and carries on."""
        thread = self._thread = threading.Thread(target=self._loop, args=(finish,), name="feature-refresh",
                                                 daemon=True)
        try:
            thread.start()
        except BaseException as exc:  # no thread can start: the round fails (the runner ends it), no loop
            log.error("probe round: no thread to carry on after a hung probe (%s): refreshes stop", exc)
            self._ended(None, exc)
            raise

    def _refresh_here(self) -> ProbeRound | None:
        """refresh() with the round run on this thread (the loop's; the runner's run_here when it has
        one); None when this thread was abandoned in a hung call (the round is published by the thread
        that carries on)."""
        joined = self._join_or_begin()
        if joined is not None:
            return joined
        run_here = getattr(self.runner, "run_here", None)
        if run_here is None:
            return self._run_and_publish(self.runner.run)
        return self._run_and_publish(lambda: run_here(self._on_hang))

    def requested_refresh(self) -> ProbeRound:
        """A caller's refresh (GetFeatures refresh=true): join the round in progress, else run one if the
        token bucket allows (REFRESH_BURST rounds at once, refilled one per min_refresh_interval), else
        answer with the last round (its probed_at tells its age)."""
        with self._cond:
            if not self._running and self._round is not None and self.min_refresh_interval > 0:
                now = time.monotonic()
                self._tokens = min(float(REFRESH_BURST),
                                   self._tokens + (now - self._refilled) / self.min_refresh_interval)
                self._refilled = now
                if self._tokens < 1.0:
                    self.coalesced += 1
                    return self._round
                self._tokens -= 1.0
        return self.refresh()

    def refresh(self) -> ProbeRound:
        """Run a probe round now, or join the one already running; return its result."""
        joined = self._join_or_begin()
        if joined is not None:
            return joined
        rnd = self._run_and_publish(self.runner.run)
        assert rnd is not None  # run() always returns a round
        return rnd

    def _join_or_begin(self) -> ProbeRound | None:
        """The round in progress, once it ends (its failure raised as RuntimeError); None when none was
        running: the caller then runs one (marked running here) and passes it to _run_and_publish."""
        with self._cond:
            if self._running:
                gen = self._generation
                while self._running and self._generation == gen:
                    self._cond.wait()
                if self._failure is not None:  # never hand out the older round as if it were fresh
                    raise RuntimeError(f"the probe round this call joined failed: {self._failure}")
                assert self._round is not None
                return self._round
            self._running = True
            return None

    def _run_and_publish(self, run: Callable[[], ProbeRound | None]) -> ProbeRound | None:
        """run() the round begun by _join_or_begin, then publish it (or its failure) to those who joined
        it and to on_round; None (nothing published, the round still running) when run() says this
        thread was abandoned: whoever finishes the round publishes it through here."""
        try:
            rnd = run()
        except BaseException as exc:
            self._ended(None, exc)
            raise
        if rnd is None:
            return None
        self._ended(rnd, None)
        for cb in self.on_round:
            cb(rnd)
        return rnd

    def _ended(self, rnd: ProbeRound | None, failure: BaseException | None) -> None:
        with self._cond:
            self._running = False
            self._generation += 1
            self._failure = failure
            if rnd is not None:
                self._round = rnd
            self._cond.notify_all()

    def current(self, timeout: float | None = None) -> ProbeRound | None:
        """The latest round; waits up to `timeout` for the first one. None if there is none yet."""
        with self._cond:
            if self._round is None:
                self._cond.wait_for(lambda: self._round is not None, timeout)
            return self._round
