"""Running a probe round: probes one after another on one worker thread, each bounded by its timeout.

Why hand-written rather than a ThreadPoolExecutor: Python cannot kill a thread, and an executor would
either give every probe a thread (most of a round's cost on two cores: 9 threads fighting for the GIL
cost 3x the probes' own work) or let one hung probe block the ones queued behind it. Here one
long-lived worker runs the round's probes in order while the caller watches the clock: a probe that
runs past its timeout (a sysfs read stuck in a driver, NVML waiting on a wedged GPU) is abandoned
with its worker — its status says it timed out — and a fresh worker carries on with the probes that
follow, so the other probes' features are still delivered. While the hung call is still running the
probe is not started again (its status says so), so a stuck probe costs one thread, not one per
round, and a round where nothing hangs starts no thread at all after the first. The caller sleeps
until the batch is done or the running call's deadline passes (no wake-up per probe: each one took
the GIL from the worker between its reads and doubled a round's cost), and a closed runner hands its
idle worker to the next runner (at most MAX_IDLE_WORKERS are kept), so probe_once pays no thread start.

run_here() is the same round without the hand-off, for a thread that exists only to probe (the daemon's
refresh loop, server/node/feature_cache.py): the calls run on that thread, and a process-wide watchdog
(probes/round_watchdog.py) that never waits on a round abandons the thread when a call passes its
deadline and hands the calls after it to the loop's on_hang, which finishes the round on a new thread
(same statuses as run(): the hung probe timed out, then "still hung" until its call returns; whatever
the abandoned thread returns later is dropped). The hand-off cost two thread wake-ups a round: on two
shared cores most of a steady round's cost beyond its reads (issue 11).

Within one round the probes share a read-through memo of the host (probes/round_host.py): the PCI and
GPU probes walk the same sysfs tree, and a file read twice in one round is read once. Across the rounds
of one runner (the daemon's), a memoizable probe whose logged host operations all answer the same again
is not run: its last output is reused (probes/probe_memo.py; the replay runs on the worker, under the
probe's timeout, as discover() would). probe_once keeps no memo. A round's host holds the directories the
last round read several files of from their first use (held_parents.py, the hint).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import cast

from nodecompat import tracing
from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe, ProbeOutput
from nodecompat.probes.held_parents import HeldParents, worth_holding
from nodecompat.probes.memo_replay import Memo
from nodecompat.probes.probe_memo import declared_memoizable
from nodecompat.probes.probe_round import ProbeRound, ProbeStatus
from nodecompat.probes.registry import LoadError
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.round_merge import _detach, _take, again, copied
from nodecompat.probes.round_watchdog import WATCHDOG, HereCalls, seconds
from nodecompat.probes.runner_worker import _acquire, _Call, _check_output, _release, _Worker

_tracer = tracing.LazyTracer("nodecompat.probes")  # OpenTelemetry only once imported (fast start)
_RoundHost = RoundHost  # its name before the split (tests import it from here)
__all__ = ["ProbeRound", "ProbeRunner", "ProbeStatus", "probe_once"]  # the round's types live in probe_round


# A `features` tuple -> (the tuple, its names, their set): the declared names of a probe whose class does
# not override feature_names(), made once per process per tuple (FeatureInfo is frozen), not once per probe
# instance: a runner's first round has new instances (issue 11). Bounded: emptied past _MAX_DECLARED.
_DECLARED: dict[int, tuple[object, list[str], frozenset[str]]] = {}
_MAX_DECLARED = 1024


def _declared_keep(probe: Probe) -> tuple[list[str], frozenset[str]]:
    """(probe.feature_names(), the same as a set), kept per `features` tuple while the probe's class does
    not override feature_names() (a plugin computing its own is asked every time). The list is shared:
    copy it before handing it out (ProbeStatus.features)."""
    feats = probe.features
    if type(feats) is tuple and type(probe).feature_names is Probe.feature_names:
        hit = _DECLARED.get(id(feats))
        if hit is not None and hit[0] is feats:
            return hit[1], hit[2]
        names = probe.feature_names()
        keep = frozenset(names)
        if len(_DECLARED) >= _MAX_DECLARED:
            _DECLARED.clear()
        _DECLARED[id(feats)] = (feats, names, keep)
        return names, keep
    names = probe.feature_names()
    return names, frozenset(names)


class _HeldCounts:
    """What held_parents.worth_holding reads of a finished round's HeldParents (its directory table, the
    directories it kept, its hint), without the HeldParents itself: that one closes the round's held
    descriptors when it is collected, which must not wait for the next round."""

    __slots__ = ("hint", "kept", "state")

    def __init__(self, held: HeldParents) -> None:
        self.hint, self.kept, self.state = held.hint, held.kept, held.state


class _Begun:
    """A round begun: the statuses decided before it runs (probes still hung), its calls, its host."""

    __slots__ = ("calls", "host", "statuses")

    def __init__(self, statuses: dict[str, ProbeStatus], calls: list[_Call], host: RoundHost) -> None:
        self.statuses, self.calls, self.host = statuses, calls, host


class ProbeRunner:
    """Runs a set of probes against one host root; keeps track of calls that hung."""

    def __init__(
        self,
        probes: Iterable[Probe],
        host: HostRoot,
        load_errors: Iterable[LoadError] = (),
        timeout: float | None = None,
        memoize: bool = True,
    ) -> None:
        """memoize: reuse a memoizable probe's last output while its logged host operations answer the
        same (probes/probe_memo.py); False for a runner used once (probe_once), which would only pay
        for the log."""
        self.probes = list(probes)
        self.memoize = memoize
        # id(probe) -> (the probe, its memo); bounded: one per probe, MAX_LOG_BYTES each
        self._memo: dict[int, tuple[Probe, Memo]] = {}
        self._hint: frozenset[str] = frozenset()  # the last round's directories worth holding at once (_hold_hint)
        self._hint_from: _HeldCounts | None = None  # the last round's held directories, not turned into it yet
        # the last round's outputs (all ok), its features (dicts of its own) and each probe's status notes
        self._last: tuple[list[ProbeOutput | None], Features, dict[str, list[str]]] | None = None
        self.host = host
        self.load_errors = list(load_errors)
        self.timeout_override = timeout
        self._hung: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._here_calls: HereCalls | None = None  # run_here's calls on the current loop thread

    @staticmethod
    def _declared(probe: Probe) -> list[str]:
        """probe.feature_names() (_declared_keep); the caller copies it before handing it out."""
        return _declared_keep(probe)[0]

    @property
    def _hold_hint(self) -> frozenset[str]:
        """The directories the last round asked for often enough to hold at once in the next
        (held_parents.worth_holding), worked out when the next round begins: a runner that runs one
        round (probe_once, the start-up prober, server/node/first_round.py) never needs it."""
        src = self._hint_from
        if src is not None:
            self._hint_from = None
            self._hint = worth_holding([cast(HeldParents, src)])
        return self._hint

    def _timeout(self, probe: Probe) -> float:
        return self.timeout_override if self.timeout_override is not None else probe.timeout

    def _idle_period(self) -> float:
        """The shortest timeout of this runner's probes in seconds (round_watchdog.seconds of each): how
        often the watchdog looks at run_here's calls while none runs."""
        if self.timeout_override is not None:
            return seconds(self.timeout_override)
        timeouts: Iterable[object]
        try:
            timeouts = {p.timeout for p in self.probes}  # usually one or two values: each converted once
        except TypeError:  # a plugin's unhashable timeout
            timeouts = [p.timeout for p in self.probes]
        return min((seconds(t) for t in timeouts), default=Probe.timeout)

    def close(self) -> None:
        """Hand the worker thread back to the process's idle workers (at most MAX_IDLE_WORKERS are
        kept; others end). A runner dropped without close() leaves one idle daemon thread."""
        with self._lock:
            if self._worker is not None:
                _release(self._worker)
                self._worker = None
            if self._here_calls is not None:
                WATCHDOG.unwatch(self._here_calls)
                self._here_calls = None

    def run(self) -> ProbeRound:
        """One round, its calls handed to a worker thread (the caller waits; a call past its timeout is
        left behind with its worker and reported timed out). Any thread may call it."""
        with self._lock, _tracer.start_as_current_span("probe round"):
            begun = self._begin()
            self._run_calls(begun.calls, begun.host)
            return self._finish(begun)

    def run_here(self, on_hang: Callable[[Callable[[], ProbeRound | None]], None]) -> ProbeRound | None:
        """One round, its calls run on the calling thread (no hand-off: probes/round_watchdog.py), for a
        thread that exists only to probe and may be abandoned (the daemon's refresh loop). Returns the
        round, or None when a call hung past its timeout: the watchdog then abandoned this thread (when
        the call returns, None is all it gets: the round is no longer its own) and called
        on_hang(finish) on its own thread, where finish() (run it on a new thread: it runs the calls
        after the hung one here, with the same isolation) returns the round, the hung probe reported
        timed out as by run(), or None if another call hangs (on_hang is then called again)."""
        self._lock.acquire()  # released by whichever thread finishes the round (_here)
        if not tracing.loaded():  # no span can be recorded, no context exists: none made (nodecompat/tracing.py)
            return self._begin_here(on_hang, None, False)
        with _tracer.start_as_current_span("probe round"):
            return self._begin_here(on_hang, tracing.current_context(), True)

    def _begin_here(self, on_hang: Callable[[Callable[[], ProbeRound | None]], None], ctx: object,
                    traced: bool) -> ProbeRound | None:  # fmt: skip
        """run_here's round from its start, self._lock held (released on an error here, else by _here)."""
        try:
            begun = self._begin()
        except BaseException:
            self._lock.release()
            raise
        return self._here(begun, begun.calls, on_hang, ctx, traced)

    def _here(self, begun: _Begun, calls: list[_Call], on_hang: Callable[[Callable[[], ProbeRound | None]], None],
              ctx: object, traced: bool | None = None) -> ProbeRound | None:  # fmt: skip
        """Run `calls` of `begun` on this thread, self._lock held for it (taken by run_here, maybe on
        another thread); release it once the round is built, or leave it to the continuation (None).
        traced: tracing.loaded() as the round began (None: asked again)."""
        here = self._here_calls
        try:
            if here is None or here.abandoned:
                here = self._here_calls = HereCalls(self._idle_period(), self.timeout_override)
                WATCHDOG.watch(here)

            def hung(rest: list[_Call]) -> None:
                try:
                    on_hang(functools.partial(self._resume, begun, rest, on_hang, ctx))
                except BaseException as exc:  # no thread to carry on (none can start): the round ends here
                    now = time.monotonic()
                    for c in rest:
                        c.started = c.finished = now
                        c.error = RuntimeError(f"not run: the round could not carry on after a hung probe ({exc})")
                    try:
                        self._finish(begun)  # the outcomes recorded (the hung probe's included), nothing else
                    finally:
                        self._lock.release()
                    raise

            if not here.run(calls, begun.host, hung, traced):
                return None
        except BaseException:
            if here is None or not here.abandoned:
                self._lock.release()
            raise
        try:
            return self._finish(begun)
        finally:
            self._lock.release()

    def _resume(self, begun: _Begun, rest: list[_Call], on_hang: Callable[[Callable[[], ProbeRound | None]], None],
                ctx: object) -> ProbeRound | None:  # fmt: skip
        """run_here's round after a hung call, on the thread that carries on: the calls not started."""
        token = tracing.attach(ctx)  # probe spans nest under the round's span
        try:
            return self._here(begun, rest, on_hang, ctx)
        finally:
            tracing.detach(token)

    def _run_calls(self, calls: list[_Call], host: HostRoot) -> None:
        """Run `calls` in order on the worker; a call past its timeout is left behind with its worker."""
        ctx = tracing.current_context()
        todo = calls
        while todo:
            if self._worker is None:
                self._worker = _acquire()
            worker = self._worker
            worker.submit(todo, host, ctx)
            while True:
                # Sleep until the batch ends or the running call's deadline passes: no wake-up per
                # probe (each one would take the GIL from the worker between its reads).
                cur = worker.current
                started = cur.started if cur is not None else None
                if cur is None or started is None:  # between calls: none can be late before this
                    left = max(0.001, min((self._timeout(c.probe) for c in todo if not c.done), default=0.0))
                elif cur.done:  # it finished as it was read: the worker moves on
                    left = 0.001
                else:
                    left = started + self._timeout(cur.probe) - time.monotonic()
                if left > 0:
                    if worker.done.acquire(timeout=left):
                        todo = []
                        break
                    continue
                # `cur` hung: leave it (and this worker) behind; the rest go to a fresh worker.
                assert cur is not None
                with worker.claim:
                    if cur.done:  # it returned as its deadline passed: not hung
                        continue
                    worker.abandon()
                    cur.abandoned = True
                    i = todo.index(cur)
                    todo = [c for c in todo[i + 1 :] if c.started is None]
                self._worker = None
                break

    def _begin(self) -> _Begun:
        """A round's calls (the probes not still hung) and its host, the still hung ones' statuses."""
        statuses: dict[str, ProbeStatus] = {}
        calls: list[_Call] = []
        hung, memo, memoize = self._hung, self._memo, self.memoize
        for probe in self.probes:
            if hung:
                prev = hung.get(probe.name)
                if prev is not None and not prev.done:
                    assert prev.started is not None
                    statuses[probe.name] = ProbeStatus(
                        probe.name,
                        ok=False,
                        error=f"still hung: the call started {time.monotonic() - prev.started:.0f}s ago "
                        "has not returned, so the probe was not started again",
                        features=list(self._declared(probe)),
                        timed_out=True,
                    )
                    continue
                hung.pop(probe.name, None)
            record = memoize and declared_memoizable(type(probe))
            held = memo.get(id(probe)) if record and memo else None
            calls.append(_Call(probe, held[1] if held is not None and held[0] is probe else None, record))

        return _Begun(statuses, calls, RoundHost.over(self.host, self._hold_hint))

    def _finish(self, begun: _Begun) -> ProbeRound:
        """The round from its calls' outcomes (each finished, failed or hung)."""
        statuses, calls = begun.statuses, begun.calls
        held = begun.host._parents[0] if begun.host._parents else None  # the next round's hint: made when it begins
        self._hint, self._hint_from = frozenset(), None if held is None else _HeldCounts(held)

        # Every probe's output is the one the last round's features were built from (all reused, none
        # failed): those features again, their dicts copied (round_merge.copied), no merge done again.
        outputs = [c.output for c in calls]
        last = self._last
        same = (
            last is not None
            and all(c.reused and not c.abandoned for c in calls)
            and len(outputs) == len(last[0])
            and all(a is b for a, b in zip(outputs, last[0], strict=True))
        )
        if same and last is not None and all(c.finished is not None and c.error is None for c in calls):
            return again(calls, [self._declared(c.probe) for c in calls], last[1], last[2], statuses, self.load_errors)
        features = copied(last[1]) if same and last is not None else Features()
        taken: set[str] = set()
        now = time.monotonic()
        ok, memoize = len(calls) == len(self.probes), self.memoize
        notes: dict[str, list[str]] = {}
        declared_of, feature_names = _DECLARED.get, Probe.feature_names
        for call in calls:
            p = call.probe
            feats = p.features  # _declared_keep's hit, inline (a call per probe is a tenth of this loop)
            hit = declared_of(id(feats))
            if hit is not None and hit[0] is feats and type(p).feature_names is feature_names:
                declared, keep = hit[1], hit[2]
            else:
                declared, keep = _declared_keep(p)
            started, finished = call.started, call.finished
            if call.abandoned or finished is None:
                self._hung[p.name] = call
                st = ProbeStatus(p.name, False, f"timed out after {self._timeout(p):g}s (probe hung; abandoned)",
                                 now - (started or now), list(declared), [], True)
            elif call.error is not None:
                st = ProbeStatus(p.name, False, f"{type(call.error).__name__}: {call.error}",
                                 finished - (started or now), list(declared))
            elif same and last is not None:  # the same output as last round, all checked then
                st = ProbeStatus(p.name, True, "", finished - (started or now), list(declared),
                                 list(last[2][p.name]), False, True)
            else:
                out = call.output
                # an output recorded into a memo (call.fresh) was checked then (runner_worker._memoized)
                problem = "" if call.fresh is not None else _check_output(p, out)
                if problem:
                    st = ProbeStatus(p.name, False, problem, finished - (started or now), list(declared))
                else:
                    assert isinstance(out, ProbeOutput)
                    st = ProbeStatus(p.name, True, "", finished - (started or now), list(declared), list(out.notes),
                                     False, call.reused)
                    undeclared: Iterable[str]
                    if type(p).__module__.startswith("nodecompat.probes."):
                        undeclared = _take(features, out.features, keep, taken)
                    else:  # a plugin may keep and change what it returned: copy it
                        undeclared = out.features.names() - keep
                        sub = out.features.subset(declared)
                        for kind in ("flags", "attributes", "instances"):
                            for name in getattr(sub, kind).keys() & getattr(features, kind).keys():
                                _detach(features, kind, name)
                        features.merge(sub)
                        taken.update(declared)
                    if undeclared:
                        st.notes.append(
                            f"dropped features the probe does not declare: {', '.join(sorted(set(undeclared)))}"
                        )
            statuses[p.name] = st
            if not st.ok:
                ok = False
            elif memoize:  # kept for a round reusing every output (round_merge.again): a list of its own
                notes[p.name] = list(st.notes)
            if not call.reused:  # a new outcome (or none): the old memo no longer holds
                if call.fresh is not None and st.ok:
                    self._memo[id(p)] = (p, call.fresh)
                else:
                    self._memo.pop(id(p), None)
        self._last = (outputs, copied(features), notes) if ok and memoize else None  # dicts of its own
        for le in self.load_errors:
            statuses[le.name] = ProbeStatus(le.name, ok=False, error=le.error)
        ordered = [statuses[k] for k in sorted(statuses)]
        return ProbeRound(features=features, statuses=ordered, probed_at=datetime.now(UTC))


def probe_once(host: HostRoot, only: Iterable[str] | None = None, timeout: float | None = None) -> ProbeRound:
    """Load the registered probes (or only the named ones) and run one round against `host`."""
    from nodecompat.probes.registry import load_probes

    probes, errors = load_probes(only)
    runner = ProbeRunner(probes, host, errors, timeout=timeout, memoize=False)  # one round: nothing to reuse
    try:
        return runner.run()
    finally:
        runner.close()
