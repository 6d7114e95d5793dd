"""The daemon's view of the node: the latest probe round, refreshed on an interval and on request.

Probing reads hundreds of sysfs files, so RPCs serve the cached round. Concurrent refresh requests are
coalesced: a caller that asks while a round is running waits for that round instead of starting
another, so a burst of `refresh=true` calls costs one probe round; and callers start at most one round
per `min_refresh_interval` on average (a token bucket allowing REFRESH_BURST in a row): a refresh past
that gets the last round, so 73 refresh calls a second from one client cost a round every interval.
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # keep refreshing; the runner already isolates probes
                if not self._stop.is_set():  # a round cut short by stop() is not news
                    log.exception("probe round failed")
            self._wake.wait(self.interval)
            self._wake.clear()

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
        rnd: ProbeRound | None = None
        failure: BaseException | None = None
        try:
            rnd = self.runner.run()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with self._cond:
                self._running = False
                self._generation += 1
                self._failure = failure
                if rnd is not None:
                    self._round = rnd
                self._cond.notify_all()
        for cb in self.on_round:
            cb(rnd)
        return rnd

    def current(self, timeout: float | None = None) -> ProbeRound | None:
        """The latest round; waits up to `timeout` for the first one. None if there is none yet."""
        with self._cond:
            if self._round is None:
                self._cond.wait_for(lambda: self._round is not None, timeout)
            return self._round
