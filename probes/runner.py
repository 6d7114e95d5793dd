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

Within one round the probes share a read-through memo of the host (probes/round_host.py): the PCI and
GPU probes walk the same sysfs tree, and a file read twice in one round is read once. Across the rounds
of one runner (the daemon's), a memoizable probe whose logged host operations all answer the same again
is not run: its last output is reused (probes/probe_memo.py; the replay runs on the worker, under the
probe's timeout, as discover() would). probe_once keeps no memo. A round's host holds the directories the
last round read several files of from their first use (held_parents.py, the hint).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from nodecompat import tracing
from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe, ProbeOutput
from nodecompat.probes.held_parents import worth_holding
from nodecompat.probes.memo_replay import Memo
from nodecompat.probes.probe_memo import declared_memoizable
from nodecompat.probes.probe_round import ProbeRound, ProbeStatus
from nodecompat.probes.registry import LoadError
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.round_merge import _detach, _take, again, copied
from nodecompat.probes.runner_worker import _acquire, _Call, _check_output, _release, _Worker

_tracer = tracing.LazyTracer("nodecompat.probes")  # OpenTelemetry only once imported (fast start)
_RoundHost = RoundHost  # its name before the split (tests import it from here)
__all__ = ["ProbeRound", "ProbeRunner", "ProbeStatus", "probe_once"]  # the round's types live in probe_round


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
        self._hold_hint: frozenset[str] = frozenset()  # the last round's directories worth holding at once
        # the last round's outputs (all ok), its features (dicts of its own) and each probe's status notes
        self._last: tuple[list[ProbeOutput | None], Features, dict[str, list[str]]] | None = None
        self.host = host
        self.load_errors = list(load_errors)
        self.timeout_override = timeout
        self._hung: dict[str, _Call] = {}
        # id(probe) -> (the probe, its `features` tuple, their names): feature_names() made once per probe
        self._names: dict[int, tuple[Probe, object, list[str]]] = {}
        self._lock = threading.Lock()
        self._worker: _Worker | None = None

    def _declared(self, probe: Probe) -> list[str]:
        """probe.feature_names(), kept while the probe's `features` is the same tuple (FeatureInfo is
        frozen) and its class does not override feature_names(); the caller copies it before handing it
        out (ProbeStatus.features). A steady round asked it again per probe: ~40 us a round."""
        feats = probe.features
        hit = self._names.get(id(probe))
        if hit is not None and hit[0] is probe and hit[1] is feats:
            return hit[2]
        names = probe.feature_names()
        if type(feats) is tuple and type(probe).feature_names is Probe.feature_names:
            self._names[id(probe)] = (probe, feats, names)
        return names

    def _timeout(self, probe: Probe) -> float:
        return self.timeout_override if self.timeout_override is not None else probe.timeout

    def close(self) -> None:
        """Hand the worker thread back to the process's idle workers (at most MAX_IDLE_WORKERS are
        kept; others end). A runner dropped without close() leaves one idle daemon thread."""
        with self._lock:
            if self._worker is not None:
                _release(self._worker)
                self._worker = None

    def run(self) -> ProbeRound:
        with self._lock, _tracer.start_as_current_span("probe round"):
            return self._run_locked()

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
                    i = todo.index(cur)
                    todo = [c for c in todo[i + 1 :] if c.started is None]
                self._worker = None
                break

    def _run_locked(self) -> ProbeRound:
        statuses: dict[str, ProbeStatus] = {}
        calls: list[_Call] = []
        for probe in self.probes:
            prev = self._hung.get(probe.name)
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
            self._hung.pop(probe.name, None)
            record = self.memoize and declared_memoizable(type(probe))
            held = self._memo.get(id(probe)) if record else None
            calls.append(_Call(probe, held[1] if held is not None and held[0] is probe else None, record))

        round_host = RoundHost.over(self.host, self._hold_hint)
        self._run_calls(calls, round_host)
        self._hold_hint = worth_holding(round_host._parents)

        # Every probe's output is the one the last round's features were built from (all reused, none
        # failed): those features again, their dicts copied (round_merge.copied), no merge done again.
        outputs = [c.output for c in calls]
        last = self._last
        same = (
            last is not None
            and all(c.reused for c in calls)
            and len(outputs) == len(last[0])
            and all(a is b for a, b in zip(outputs, last[0], strict=True))
        )
        if same and last is not None and all(c.finished is not None and c.error is None for c in calls):
            return again(calls, [self._declared(c.probe) for c in calls], last[1], last[2], statuses, self.load_errors)
        features = copied(last[1]) if same and last is not None else Features()
        taken: set[str] = set()
        now = time.monotonic()
        for call in calls:
            p = call.probe
            declared = self._declared(p)
            st = ProbeStatus(p.name, ok=False, features=list(declared))
            if not call.done:
                self._hung[p.name] = call
                st.timed_out = True
                st.duration_seconds = now - (call.started or now)
                st.error = f"timed out after {self._timeout(p):g}s (probe hung; abandoned)"
            elif call.error is not None:
                st.duration_seconds = (call.finished or now) - (call.started or now)
                st.error = f"{type(call.error).__name__}: {call.error}"
            elif same and self._last is not None:  # the same output as last round, all checked then
                st.duration_seconds = (call.finished or now) - (call.started or now)
                st.ok = st.reused = True
                st.notes = list(self._last[2][p.name])
            else:
                st.duration_seconds = (call.finished or now) - (call.started or now)
                problem = _check_output(p, call.output)
                if problem:
                    st.error = problem
                else:
                    assert isinstance(call.output, ProbeOutput)
                    st.ok = True
                    st.reused = call.reused
                    st.notes = list(call.output.notes)
                    undeclared = call.output.features.names() - set(declared)
                    if undeclared:
                        st.notes.append(
                            f"dropped features the probe does not declare: {', '.join(sorted(undeclared))}"
                        )
                    if type(p).__module__.startswith("nodecompat.probes."):
                        _take(features, call.output.features, declared, taken)
                    else:  # a plugin may keep and change what it returned: copy it
                        sub = call.output.features.subset(declared)
                        for kind in ("flags", "attributes", "instances"):
                            for name in getattr(sub, kind).keys() & getattr(features, kind).keys():
                                _detach(features, kind, name)
                        features.merge(sub)
                        taken.update(declared)
            statuses[p.name] = st
            if not call.reused:  # a new outcome (or none): the old memo no longer holds
                if call.fresh is not None and st.ok:
                    self._memo[id(p)] = (p, call.fresh)
                else:
                    self._memo.pop(id(p), None)
        ok = all(statuses[c.probe.name].ok for c in calls) and len(calls) == len(self.probes)
        notes = {c.probe.name: list(statuses[c.probe.name].notes) for c in calls}
        self._last = (outputs, copied(features), notes) if ok and self.memoize else None  # dicts of its own
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
