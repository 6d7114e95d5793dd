"""Running a probe round: every probe in its own thread, each bounded by its timeout.

Python cannot kill a thread, so a probe that hangs (a sysfs read stuck in a driver, NVML waiting on
a wedged GPU) is abandoned: its status says it timed out, the other probes' features are delivered,
and while the hung call is still running the probe is not started again (its status says so), so a
stuck probe costs one thread, not one per round.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace

from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.base import Probe, ProbeOutput
from nodecompat.probes.registry import LoadError

_tracer = trace.get_tracer("nodecompat.probes")


@dataclass
class ProbeStatus:
    name: str
    ok: bool
    error: str = ""
    duration_seconds: float = 0.0
    features: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False


@dataclass
class ProbeRound:
    """The features of one probe round and how each probe fared."""

    features: Features
    statuses: list[ProbeStatus]
    probed_at: datetime

    def unknown_features(self) -> dict[str, str]:
        """Feature name -> why its facts are unknown, for each feature of a failed probe."""
        out: dict[str, str] = {}
        for st in self.statuses:
            if not st.ok:
                for name in st.features:
                    out[name] = f"probe {st.name} failed: {st.error}"
        return out


class _Call:
    def __init__(self, probe: Probe, host: HostRoot) -> None:
        self.probe = probe
        self.output: ProbeOutput | None = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        # Carry the caller's trace context into the probe thread so probe spans nest under the RPC span.
        self._otel_ctx = otel_context.get_current()
        self.thread = threading.Thread(
            target=self._run, args=(host,), name=f"probe-{probe.name}", daemon=True
        )

    def _run(self, host: HostRoot) -> None:
        otel_context.attach(self._otel_ctx)
        with _tracer.start_as_current_span(f"probe {self.probe.name}") as span:
            span.set_attribute("nodecompat.probe", self.probe.name)
            try:
                self.output = self.probe.discover(host)
            except BaseException as exc:  # isolate everything, including SystemExit from a plugin
                self.error = exc
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, str(exc))
            finally:
                self.finished = time.monotonic()


class ProbeRunner:
    """Runs a set of probes against one host root; keeps track of calls that hung."""

    def __init__(
        self,
        probes: Iterable[Probe],
        host: HostRoot,
        load_errors: Iterable[LoadError] = (),
        timeout: float | None = None,
    ) -> None:
        self.probes = list(probes)
        self.host = host
        self.load_errors = list(load_errors)
        self.timeout_override = timeout
        self._hung: dict[str, _Call] = {}
        self._lock = threading.Lock()

    def _timeout(self, probe: Probe) -> float:
        return self.timeout_override if self.timeout_override is not None else probe.timeout

    def run(self) -> ProbeRound:
        with self._lock, _tracer.start_as_current_span("probe round"):
            return self._run_locked()

    def _run_locked(self) -> ProbeRound:
        statuses: dict[str, ProbeStatus] = {}
        calls: list[_Call] = []
        for probe in self.probes:
            prev = self._hung.get(probe.name)
            if prev is not None and prev.thread.is_alive():
                statuses[probe.name] = ProbeStatus(
                    probe.name,
                    ok=False,
                    error=f"still hung: the call started {time.monotonic() - prev.started:.0f}s ago "
                    "has not returned, so the probe was not started again",
                    features=probe.feature_names(),
                    timed_out=True,
                )
                continue
            self._hung.pop(probe.name, None)
            call = _Call(probe, self.host)
            call.thread.start()
            calls.append(call)

        for call in calls:
            remaining = self._timeout(call.probe) - (time.monotonic() - call.started)
            call.thread.join(max(0.0, remaining))

        features = Features()
        for call in calls:
            p = call.probe
            st = ProbeStatus(p.name, ok=False, features=p.feature_names())
            if call.thread.is_alive():
                self._hung[p.name] = call
                st.timed_out = True
                st.duration_seconds = time.monotonic() - call.started
                st.error = f"timed out after {self._timeout(p):g}s (probe hung; abandoned)"
            elif call.error is not None:
                st.duration_seconds = (call.finished or time.monotonic()) - call.started
                st.error = f"{type(call.error).__name__}: {call.error}"
            else:
                st.duration_seconds = (call.finished or time.monotonic()) - call.started
                problem = _check_output(p, call.output)
                if problem:
                    st.error = problem
                else:
                    assert isinstance(call.output, ProbeOutput)
                    st.ok = True
                    st.notes = list(call.output.notes)
                    undeclared = call.output.features.names() - set(p.feature_names())
                    if undeclared:
                        st.notes.append(
                            f"dropped features the probe does not declare: {', '.join(sorted(undeclared))}"
                        )
                    features.merge(call.output.features.subset(p.feature_names()))
            statuses[p.name] = st
        for le in self.load_errors:
            statuses[le.name] = ProbeStatus(le.name, ok=False, error=le.error)
        ordered = [statuses[k] for k in sorted(statuses)]
        return ProbeRound(features=features, statuses=ordered, probed_at=datetime.now(UTC))


def _check_output(probe: Probe, output: object) -> str:
    """Why a probe's return value is unusable ("" when it is fine): plugins are not trusted."""
    if not isinstance(output, ProbeOutput):
        return f"discover() returned {type(output).__name__}, not a ProbeOutput"
    if not isinstance(output.features, Features):
        return f"discover() returned features of type {type(output.features).__name__}, not Features"
    if not all(isinstance(n, str) for n in output.notes):
        return "discover() returned notes that are not strings"
    return ""


def probe_once(host: HostRoot, only: Iterable[str] | None = None, timeout: float | None = None) -> ProbeRound:
    """Load the registered probes (or only the named ones) and run one round against `host`."""
    from nodecompat.probes.registry import load_probes

    probes, errors = load_probes(only)
    return ProbeRunner(probes, host, errors, timeout=timeout).run()
