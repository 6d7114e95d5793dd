"""The daemon's refresh loop runs its probe rounds on its own thread (ProbeRunner.run_here, no hand-off
to a worker), and a probe call stuck in the kernel (a read of an empty pipe) is still isolated: the
watchdog publishes the round with that probe timed out, a new loop thread carries on, the stuck
thread's late result is never published, and threads stay bounded."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.runner import ProbeRunner
from nodecompat.server.node.feature_cache import FeatureCache

WAIT = 20.0  # s: how long a test waits for what must happen (not a speed assertion)


class Noting(Probe):
    """Records the thread of each discover() call."""

    features = ()

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.features = (FeatureInfo(f"{name}.x", frozenset({"attribute"})),)  # type: ignore[misc]
        self.threads: list[int] = []

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.threads.append(threading.get_ident())
        out = ProbeOutput()
        out.features.add_attributes(f"{self.name}.x", {"v": self.name})
        return out


class PipeStuck(Probe):
    """Blocks in read(2) on an empty pipe (a system call stuck in the kernel) while `stuck` is set;
    a write to the pipe lets the call return (with features it would publish if allowed)."""

    name = "pipe"
    features = (FeatureInfo("pipe.x", frozenset({"attribute"})),)
    timeout = 0.3

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.stuck = True
        self.threads: list[threading.Thread] = []
        self.returned = threading.Event()

    def discover(self, host: HostRoot) -> ProbeOutput:
        self.threads.append(threading.current_thread())
        out = ProbeOutput()
        if self.stuck:
            data = os.read(self.r, 1)
            out.features.add_attributes("pipe.x", {"late": data.decode()})
            self.returned.set()
            return out
        out.features.add_attributes("pipe.x", {"v": "fine"})
        return out

    def unstick(self) -> None:
        self.stuck = False
        os.write(self.w, b"L")

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def pipe() -> Iterator[PipeStuck]:
    p = PipeStuck()
    try:
        yield p
    finally:
        if p.stuck:
            p.unstick()
        p.returned.wait(5)
        p.close()


def _until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class Published:
    """The rounds a cache published (on_round), with the thread that published each."""

    def __init__(self, cache: FeatureCache) -> None:
        self.rounds: list[tuple[ProbeRound, threading.Thread]] = []
        self.lock = threading.Lock()
        cache.on_round.append(self._on)

    def _on(self, rnd: ProbeRound) -> None:
        with self.lock:
            self.rounds.append((rnd, threading.current_thread()))

    def count(self) -> int:
        with self.lock:
            return len(self.rounds)

    def status(self, i: int, name: str) -> object:
        return {s.name: s for s in self.rounds[i][0].statuses}[name]


def test_the_loops_rounds_run_on_the_loop_thread(tmp_path: Path) -> None:
    """No hand-off: each probe of the loop's rounds is called on the loop's own thread (run() would call
    them on a worker thread)."""
    a, b = Noting("a"), Noting("b")
    cache = FeatureCache(ProbeRunner([a, b], HostRoot(tmp_path)), interval=3600)
    pub = Published(cache)
    cache.start()
    try:
        _until(lambda: pub.count() >= 1, "first round")
        cache.poke("test")
        _until(lambda: pub.count() >= 2, "second round")
        loop = cache._thread
        assert loop is not None
        assert set(a.threads) == set(b.threads) == {loop.ident}
        assert all(t is loop for _r, t in pub.rounds)
    finally:
        cache.stop()


def test_a_call_stuck_in_the_kernel_gives_a_timed_out_round_and_the_loop_carries_on(
    tmp_path: Path, pipe: PipeStuck
) -> None:
    """The loop's thread stuck in read(2): the round is still published, the stuck probe timed out and
    the probes after it run (on the new loop thread); later rounds run on that thread ("still hung"),
    and once the call returns its result is dropped - never published - and the probe runs again."""
    before, after = Noting("a"), Noting("z")
    cache = FeatureCache(ProbeRunner([before, pipe, after], HostRoot(tmp_path)), interval=3600)
    pub = Published(cache)
    cache.start()
    first_loop = cache._thread
    try:
        _until(lambda: pub.count() >= 1, "a round published although its loop thread is stuck in read(2)")
        rnd, publisher = pub.rounds[0]
        st = {s.name: s for s in rnd.statuses}
        assert st["pipe"].timed_out and not st["pipe"].ok and "timed out" in st["pipe"].error
        assert st["a"].ok and st["z"].ok and rnd.features.attributes["z.x"].elements == {"v": "z"}
        assert "pipe.x" not in rnd.features.attributes
        stuck_thread = pipe.threads[0]
        assert stuck_thread is first_loop and stuck_thread.is_alive()  # still in read(2)
        assert publisher is not stuck_thread and publisher is cache._thread  # the new loop thread
        assert after.threads == [publisher.ident]

        cache.poke("again")
        _until(lambda: pub.count() >= 2, "a later round on the new loop thread")
        assert pub.rounds[1][1] is publisher
        again = pub.status(1, "pipe")
        assert again.timed_out and "still hung" in again.error  # type: ignore[attr-defined]
        assert len(pipe.threads) == 1  # not started again while its call is stuck

        pipe.unstick()  # the stuck read returns "L"; that thread must publish nothing and end
        assert pipe.returned.wait(WAIT)
        stuck_thread.join(WAIT)
        assert not stuck_thread.is_alive()
        cache.poke("after the call returned")
        _until(lambda: pub.count() >= 3, "a round after the stuck call returned")
        assert pub.status(2, "pipe").ok  # type: ignore[attr-defined]
        assert pub.rounds[2][0].features.attributes["pipe.x"].elements == {"v": "fine"}
        assert all(t is not stuck_thread for _r, t in pub.rounds)
        assert all(
            "late" not in (r.features.attributes["pipe.x"].elements if "pipe.x" in r.features.attributes else {})
            for r, _t in pub.rounds
        )
        assert cache.current() is pub.rounds[-1][0]
    finally:
        cache.stop()


def test_stuck_threads_stay_bounded(tmp_path: Path, pipe: PipeStuck) -> None:
    """A probe stuck for good costs one thread, however many rounds follow (it is not started again),
    plus the loop thread and the process's watchdog."""
    cache = FeatureCache(ProbeRunner([Noting("a"), pipe], HostRoot(tmp_path)), interval=3600)
    pub = Published(cache)
    before = threading.active_count()
    cache.start()
    try:
        _until(lambda: pub.count() >= 1, "first round")
        for i in range(2, 12):
            cache.poke("again")
            _until(lambda i=i: pub.count() >= i, f"round {i}")  # type: ignore[misc]
        assert all(pub.status(i, "pipe").timed_out for i in range(pub.count()))  # type: ignore[attr-defined]
        assert len(pipe.threads) == 1
        assert threading.active_count() <= before + 3  # stuck + loop + watchdog (if it was not running yet)
    finally:
        cache.stop()


def test_run_here_returns_none_to_the_abandoned_thread_and_the_round_to_the_continuation(
    tmp_path: Path, pipe: PipeStuck
) -> None:
    """ProbeRunner.run_here on its own: the thread stuck in a call gets None once the call returns (its
    result dropped), and finish() given to on_hang returns the round (stuck probe timed out, the
    others ran); the runner then serves the next round."""
    runner = ProbeRunner([pipe, Noting("z")], HostRoot(tmp_path))
    handed: list[Callable[[], ProbeRound | None]] = []
    got: list[ProbeRound | None] = []
    t = threading.Thread(target=lambda: got.append(runner.run_here(handed.append)))
    t.start()
    try:
        _until(lambda: bool(handed), "on_hang called by the watchdog")
        rnd = handed[0]()
        assert rnd is not None
        st = {s.name: s for s in rnd.statuses}
        assert st["pipe"].timed_out and st["z"].ok
        assert t.is_alive() and not got
        pipe.unstick()
        t.join(WAIT)
        assert got == [None]
        nxt = runner.run_here(handed.append)
        assert nxt is not None and {s.name: s.ok for s in nxt.statuses} == {"pipe": True, "z": True}
        assert len(handed) == 1
    finally:
        runner.close()


def test_when_no_thread_can_carry_on_the_round_still_ends(tmp_path: Path, pipe: PipeStuck) -> None:
    """on_hang failing (no thread could start): the round is ended by the runner (its lock released, the
    probes after the hung one reported not run), so the next round runs and reports the probe still hung."""
    runner = ProbeRunner([pipe, Noting("z")], HostRoot(tmp_path))
    tried = threading.Event()

    def cannot(_finish: Callable[[], ProbeRound | None]) -> None:
        tried.set()
        raise RuntimeError("can't start new thread")

    t = threading.Thread(target=runner.run_here, args=(cannot,), daemon=True)
    t.start()
    try:
        assert tried.wait(WAIT)
        nxt = runner.run()  # would wait forever on the runner's lock if the round had not ended
        st = {s.name: s for s in nxt.statuses}
        assert st["pipe"].timed_out and "still hung" in st["pipe"].error and st["z"].ok
    finally:
        runner.close()


def test_a_plugins_timeout_that_is_not_seconds_is_watched_at_the_default() -> None:
    from nodecompat.probes.round_watchdog import DEFAULT_TIMEOUT, seconds

    assert seconds(0.3) == 0.3 and seconds(2) == 2.0
    assert [seconds(v) for v in ("soon", None, 0, -1, float("nan"), float("inf"))] == [DEFAULT_TIMEOUT] * 6


def test_a_runner_watched_while_the_watchdog_sleeps_long_is_still_watched_at_its_own_timeout(
    tmp_path: Path, pipe: PipeStuck
) -> None:
    """The watchdog is woken by a new runner only when its next look is too late for that runner (a first
    round does not wake it otherwise): with a runner whose probes time out after an hour watched (the
    watchdog sleeps an hour), a second runner's call stuck past its 0.3 s timeout is still abandoned."""
    slow = ProbeRunner([Noting("a")], HostRoot(tmp_path), timeout=3600.0)
    runner = ProbeRunner([pipe, Noting("z")], HostRoot(tmp_path))
    handed: list[Callable[[], ProbeRound | None]] = []
    try:
        assert slow.run_here(handed.append) is not None  # watched: the next look an hour away at most
        threading.Thread(target=runner.run_here, args=(handed.append,), daemon=True).start()
        _until(lambda: bool(handed), "on_hang called by the watchdog within the stuck probe's timeout")
        rnd = handed[0]()
        assert rnd is not None
        assert {s.name: s.timed_out for s in rnd.statuses} == {"pipe": True, "z": False}
    finally:
        pipe.unstick()
        runner.close()
        slow.close()
