"""The probe runner's worker thread: one probe call after another, each outcome in its _Call.

Apart from probes/runner.py (which decides what a round runs, watches the clock and builds the round):
_Worker runs a batch of calls in order on one long-lived thread, handed over by two plain locks (see
_Worker); a closed runner's idle worker serves the next runner (_acquire/_release, at most
MAX_IDLE_WORKERS kept); _discover runs one call: the probe's memo replayed on the round's host when it
has one (probes/memo_replay.py, the replay context made once per batch), else discover(), on a recording
view of the host when the probe is memoizable. Hand-written for the reasons in runner.py's docstring.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from nodecompat import tracing
from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe, ProbeOutput
from nodecompat.probes.memo_replay import Memo, ReplayContext, finish, replay_context, replays
from nodecompat.probes.probe_memo import RecordingHost
from nodecompat.probes.round_host import RoundHost

_tracer = tracing.LazyTracer("nodecompat.probes")  # OpenTelemetry only once imported (fast start)

class _Call:
    """One probe's call in a round: filled in by the worker, read by the round."""

    __slots__ = ("abandoned", "error", "finished", "fresh", "memo", "output", "probe", "record", "reused", "started",
                 "worker")

    def __init__(self, probe: Probe, memo: Memo | None = None, record: bool = False) -> None:
        self.probe = probe
        self.memo = memo  # the probe's last outcome and the log that validates it (probe_memo.py)
        self.record = record  # log this call's host operations (the probe is memoizable)
        self.fresh: Memo | None = None  # this call's memo, when it ran, recorded and succeeded
        self.reused = False  # the log replayed identically: output is memo.output, discover() not called
        self.output: ProbeOutput | None = None
        self.error: BaseException | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.worker: _Worker | None = None
        # left behind past its timeout: the round reports it timed out even if it returns meanwhile
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self.finished is not None


class _Worker:
    """A thread running batches of probe calls in order; abandoned (never reused) once a call hangs.

    The hand-off is two plain locks used as binary semaphores: `go` (held while there is nothing to
    run; submit releases it) and `done` (released by the worker at the end of each batch; the round
    waits on it with the running call's deadline). A waiter is woken by the very release the other side
    makes last: a Condition's notify made before its waiter had released the GIL cost the woken thread
    a second sleep, on the GIL (issue 11: the hand-off was most of a steady round's cost beyond its
    reads)."""

    def __init__(self) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.done = threading.Lock()
        self.done.acquire()
        # taken (uncontended but for a hang) to start or finish a call, and by the round to abandon the
        # worker: a call is never started by a worker the round has abandoned and handed the rest on from
        self.claim = threading.Lock()
        self.batch: list[_Call] = []
        self.host: HostRoot | None = None
        self.ctx: Any = None  # OpenTelemetry's context of the round, None while it is not imported
        self.abandoned = False
        self.current: _Call | None = None
        self.thread = threading.Thread(target=self._loop, name="probe-worker", daemon=True)
        self.thread.start()

    def submit(self, calls: list[_Call], host: HostRoot, ctx: Any) -> None:
        """Run `calls` in order (the worker is idle: its last batch is done); `done` is released after."""
        self.batch, self.host, self.ctx = list(calls), host, ctx
        for c in calls:
            c.worker = self
        self.go.release()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            if self.abandoned:
                return
            batch, host, ctx = self.batch, self.host, self.ctx
            self.batch, self.host, self.ctx = [], None, None
            assert host is not None
            token = tracing.attach(ctx)  # probe spans nest under the caller's span
            traced = ctx is not None or tracing.loaded()  # asked once per batch, not per probe
            replay: list[ReplayContext] = []  # memo_replay.replay_context of the round's host, at need
            try:
                for call in batch:
                    with self.claim:
                        if self.abandoned:  # the round moved the rest to a fresh worker
                            return
                        self.current = call
                        call.started = time.monotonic()
                    _discover(call, host, traced, replay)
                    with self.claim:
                        call.finished = time.monotonic()
                        self.current = None
            finally:
                tracing.detach(token)
                # The round's host (and the descriptors it holds) is not kept by an idle worker.
                del batch, host, ctx
            if self.abandoned:
                return
            self.done.release()  # the round's watcher wakes once, at the end of the batch

    def abandon(self) -> None:
        """Let the thread end: now when idle, else after the call it is in (never given work again)."""
        self.abandoned = True
        self.batch = []
        # An idle worker wakes to end; a busy one ends after its call. RuntimeError: already released
        # (the worker takes it, sees `abandoned` and ends).
        with contextlib.suppress(RuntimeError):
            self.go.release()

    def stop(self) -> None:
        self.abandon()


MAX_IDLE_WORKERS = 2
_idle_lock = threading.Lock()
_idle: list[_Worker] = []


def _acquire() -> _Worker:
    """An idle worker thread left by a closed runner, else a new one: a one-off round (probe_once,
    the CLI) does not pay a thread start each time."""
    with _idle_lock:
        while _idle:
            w = _idle.pop()
            if not w.abandoned and w.thread.is_alive():
                return w
    return _Worker()


def _release(worker: _Worker) -> None:
    """Keep a healthy idle worker for the next runner (bounded), else let its thread end."""
    healthy = not worker.abandoned and worker.current is None and not worker.batch
    if healthy:
        with _idle_lock:
            if len(_idle) < MAX_IDLE_WORKERS:
                _idle.append(worker)
                return
    worker.stop()


def _discover(call: _Call, host: HostRoot, traced: bool = True, replay: list[ReplayContext] | None = None) -> None:
    """Run one call (its replay or discover()), recording the outcome in `call`; replay: a batch's holder
    of the round's replay context (made by the first call that replays, used by the others)."""
    if replay is None:
        replay = []
    if not traced:  # OpenTelemetry not imported: no span can be recorded (nodecompat/tracing.py)
        try:
            _memoized(call, host, replay)
        except BaseException as exc:  # isolate everything, including SystemExit from a plugin
            call.error = exc
        return
    with _tracer.start_as_current_span(f"probe {call.probe.name}") as span:
        span.set_attribute("nodecompat.probe", call.probe.name)
        try:
            _memoized(call, host, replay)
        except BaseException as exc:  # isolate everything, including SystemExit from a plugin
            call.error = exc
            span.record_exception(exc)
            tracing.set_error(span, str(exc))
        if call.reused:
            span.set_attribute("nodecompat.probe.reused", True)


def _memoized(call: _Call, host: HostRoot, replay: list[ReplayContext]) -> None:
    """The probe's last output when its log replays identically on this round's host, else discover()
    (on a recording view of the host when the probe is memoizable; probes/probe_memo.py). replay: the
    round's replay context once a call of the batch made it (memo_replay.replay_context), else []."""
    memo = call.memo
    if memo is not None and isinstance(host, RoundHost):
        if not replay:
            replay.append(replay_context(host))
        if replays(memo, host, replay[0]):
            call.output = memo.output
            call.reused = True
            return
    if call.record and isinstance(host, RoundHost):
        view = RecordingHost.of(host)
        out = call.output = call.probe.discover(view)
        if not _check_output(call.probe, out):
            call.fresh = finish(view.log, out)
        return
    call.output = call.probe.discover(host)


def _check_output(probe: Probe, output: object) -> str:
    """Why a probe's return value is unusable ("" when it is fine): plugins are not trusted."""
    if type(output) is ProbeOutput and type(output.features) is Features:  # the usual case, asked directly
        notes = output.notes
        if not notes or (type(notes) is list and all(type(n) is str for n in notes)):
            return ""
    if not isinstance(output, ProbeOutput):
        return f"discover() returned {type(output).__name__}, not a ProbeOutput"
    if not isinstance(output.features, Features):
        return f"discover() returned features of type {type(output.features).__name__}, not Features"
    notes = output.notes
    if notes and not all(isinstance(n, str) for n in notes):
        return "discover() returned notes that are not strings"
    return ""
