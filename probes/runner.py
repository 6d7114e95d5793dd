"""Running a probe round: probes one after another on one worker thread, each bounded by its timeout.

Why hand-written rather than a ThreadPoolExecutor: Python cannot kill a thread, and an executor would
either give every probe a thread (most of a round's cost on two cores: 9 threads fighting for the GIL
cost 3x the probes' own work) or let one hung probe block the ones queued behind it. Here one
long-lived worker runs the round's probes in order while the caller watches the clock: a probe that
runs past its timeout (a sysfs read stuck in a driver, NVML waiting on a wedged GPU) is abandoned
with its worker — its status says it timed out — and a fresh worker carries on with the probes that
follow, so the other probes' features are still delivered. While the hung call is still running the
probe is not started again (its status says so), so a stuck probe costs one thread, not one per
round, and a round where nothing hangs starts no thread at all after the first.

Within one round the probes share a read-through memo of the host (`_RoundHost`): the PCI and GPU
probes walk the same sysfs tree, and a file read twice in one round is read once.
"""

from __future__ import annotations

import dataclasses
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from nodecompat import tracing
from nodecompat.features import Features
from nodecompat.hostroot import MAX_SYMLINKS, HostRoot
from nodecompat.probes.base import Probe, ProbeOutput
from nodecompat.probes.registry import LoadError

_tracer = tracing.LazyTracer("nodecompat.probes")  # OpenTelemetry only once imported (fast start)


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


@dataclass(frozen=True)
class _RoundHost(HostRoot):
    """The round's host: every read goes to HostRoot once per round, then comes from the memo."""

    memo: dict[tuple[str, str], object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def over(cls, host: HostRoot) -> _RoundHost:
        return cls(**{f.name: getattr(host, f.name) for f in dataclasses.fields(host) if f.init})

    def _get(self, kind: str, host_path: str | os.PathLike[str], read: Callable[[Any], Any]) -> Any:
        key = (kind, os.fspath(host_path))
        try:
            return self.memo[key]
        except KeyError:
            value = self.memo[key] = read(host_path)
            return value

    def read_text(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> str | None:
        if within is not None:  # confined reads (features.d) are not memoized: the key would need `within`
            return super().read_text(host_path, within=within)
        return cast("str | None", self._get("t", host_path, super().read_text))

    def read_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> bytes | None:
        if within is not None:
            return super().read_bytes(host_path, within=within)
        return cast("bytes | None", self._get("b", host_path, super().read_bytes))

    def exists(self, host_path: str | os.PathLike[str]) -> bool:
        return cast(bool, self._get("e", host_path, super().exists))

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        return list(self._get("l", host_path, super().listdir))

    def link_target_name(self, host_path: str | os.PathLike[str]) -> str | None:
        return cast("str | None", self._get("k", host_path, super().link_target_name))

    def path(self, host_path: str | os.PathLike[str]) -> Path:
        return cast(Path, self._get("p", host_path, super().path))

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None, strict: bool = False) -> Path:
        """HostRoot.resolve with every directory resolved once per round.

        The same chroot-like walk as HostRoot's (`..` on the resolved path, a relative link's target
        read from the resolved directory, an absolute one re-rooted at the host root), with each
        resolved prefix kept, so the hundreds of sysfs paths of a round cost one lstat per new
        component. Anything unusual (a missing component, too many links, `within`) takes HostRoot's
        own walk, and reads still check the opened descriptor's real path."""
        if within is not None:
            return super().resolve(host_path, within=within, strict=strict)
        text = os.fspath(host_path)
        key = ("r" if strict else "rn", text)
        hit = self.memo.get(key)
        if hit is not None:
            return cast(Path, hit)
        try:
            resolved = self._walk_memo(text, 0)
        except _Missing as missing:  # only the last component is missing: as HostRoot's walk answers
            if strict:
                raise FileNotFoundError(2, "No such file or directory", text) from None
            resolved = missing.path
        except (OSError, RecursionError):
            resolved = None
        if resolved is None:
            result = super().resolve(text, strict=strict)
        else:
            real_root = self._real_root
            result = Path(resolved if real_root == "/" else real_root.rstrip("/") + resolved)
        self.memo[key] = result
        return result

    def _open(self, host_path: str | os.PathLike[str], within: str | None, flags: int = 0) -> int:
        """HostRoot._open; with the host root at `/` (chroot semantics are the kernel's own there, and
        every real path is inside the root) the kernel resolves the path in the open itself instead of
        a resolve, an O_NOFOLLOW open and a /proc/self/fd check that cannot fail."""
        if within is None and self._real_root == "/":
            text = os.fspath(host_path)
            return os.open(text if text.startswith("/") else "/" + text, _ROOT_OPEN_FLAGS | flags)
        return super()._open(host_path, within, flags)

    def _walk_memo(self, host_path: str, links: int) -> str | None:
        """The resolved host path ("/a/b"), or None to let HostRoot decide (errors, loops).
        Raises _Missing when only the last component is missing, OSError for HostRoot to judge."""
        if links > MAX_SYMLINKS:
            return None
        real_root = self._real_root.rstrip("/")
        cur = "/"
        parts = [p for p in host_path.split("/") if p and p != "."]
        for i, part in enumerate(parts):
            if part == "..":
                cur = cur.rsplit("/", 1)[0] or "/"
                continue
            nxt = cur + part if cur == "/" else cur + "/" + part
            key = ("h", nxt)
            hit = cast("tuple[str, bool] | None", self.memo.get(key))
            if hit is None:
                real = real_root + nxt
                try:
                    st = os.lstat(real)
                except FileNotFoundError:
                    if i == len(parts) - 1:
                        raise _Missing(nxt) from None
                    raise  # a missing directory: HostRoot's walk decides
                if stat_mod.S_ISLNK(st.st_mode):
                    target = os.readlink(real)
                    base = "/" if target.startswith("/") else cur
                    try:
                        resolved = self._walk_memo(base.rstrip("/") + "/" + target, links + 1)
                    except _Missing:  # a dangling link: fine as the last component, else HostRoot decides
                        if i == len(parts) - 1:
                            raise
                        raise FileNotFoundError(2, "No such file or directory", host_path) from None
                    if resolved is None:
                        return None
                    hit = (resolved, os.path.isdir(real_root + resolved))
                else:
                    hit = (nxt, stat_mod.S_ISDIR(st.st_mode))
                self.memo[key] = hit
            cur, is_dir = hit
            if not is_dir and i < len(parts) - 1:
                raise NotADirectoryError(20, "Not a directory", host_path)  # HostRoot's walk decides
        return cur


_ROOT_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class _Missing(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class _Call:
    """One probe's call in a round: filled in by the worker, read by the round."""

    __slots__ = ("error", "finished", "output", "probe", "started", "worker")

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.output: ProbeOutput | None = None
        self.error: BaseException | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.worker: _Worker | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None


class _Worker:
    """A thread running batches of probe calls in order; abandoned (never reused) once a call hangs."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.batch: list[_Call] = []
        self.host: HostRoot | None = None
        self.ctx: Any = None  # OpenTelemetry's context of the round, None while it is not imported
        self.abandoned = False
        self.current: _Call | None = None
        self.thread = threading.Thread(target=self._loop, name="probe-worker", daemon=True)
        self.thread.start()

    def submit(self, calls: list[_Call], host: HostRoot, ctx: Any) -> None:
        with self.cond:
            self.batch, self.host, self.ctx = list(calls), host, ctx
            for c in calls:
                c.worker = self
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.batch and not self.abandoned:
                    self.cond.wait()
                if self.abandoned and not self.batch:
                    return
                batch, host, ctx = self.batch, self.host, self.ctx
                self.batch = []
            assert host is not None
            token = tracing.attach(ctx)  # probe spans nest under the caller's span
            try:
                for call in batch:
                    with self.cond:
                        if self.abandoned:  # the round moved the rest to a fresh worker
                            return
                        self.current = call
                        call.started = time.monotonic()
                    _discover(call, host)
                    with self.cond:
                        call.finished = time.monotonic()
                        self.current = None
                        self.cond.notify_all()
            finally:
                tracing.detach(token)

    def abandon(self) -> None:
        with self.cond:
            self.abandoned = True
            self.batch = []
            self.cond.notify_all()

    def stop(self) -> None:
        self.abandon()


def _discover(call: _Call, host: HostRoot) -> None:
    with _tracer.start_as_current_span(f"probe {call.probe.name}") as span:
        span.set_attribute("nodecompat.probe", call.probe.name)
        try:
            call.output = call.probe.discover(host)
        except BaseException as exc:  # isolate everything, including SystemExit from a plugin
            call.error = exc
            span.record_exception(exc)
            tracing.set_error(span, str(exc))


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
        self._worker: _Worker | None = None

    def _timeout(self, probe: Probe) -> float:
        return self.timeout_override if self.timeout_override is not None else probe.timeout

    def close(self) -> None:
        """Let the worker thread end (a runner that is dropped without close() leaves one idle daemon thread)."""
        with self._lock:
            if self._worker is not None:
                self._worker.stop()
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
                self._worker = _Worker()
            worker = self._worker
            worker.submit(todo, host, ctx)
            with worker.cond:
                while True:
                    if all(c.done for c in todo):
                        todo = []
                        break
                    cur = worker.current
                    if cur is None or cur.started is None:
                        worker.cond.wait(0.05)
                        continue
                    left = cur.started + self._timeout(cur.probe) - time.monotonic()
                    if left > 0:
                        worker.cond.wait(left)
                        continue
                    # `cur` hung: leave it (and this worker) behind; the rest go to a fresh worker.
                    worker.abandoned = True
                    worker.batch = []
                    worker.cond.notify_all()
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
                    features=probe.feature_names(),
                    timed_out=True,
                )
                continue
            self._hung.pop(probe.name, None)
            calls.append(_Call(probe))

        self._run_calls(calls, _RoundHost.over(self.host))

        features = Features()
        taken: set[str] = set()
        now = time.monotonic()
        for call in calls:
            p = call.probe
            declared = p.feature_names()
            st = ProbeStatus(p.name, ok=False, features=declared)
            if not call.done:
                self._hung[p.name] = call
                st.timed_out = True
                st.duration_seconds = now - (call.started or now)
                st.error = f"timed out after {self._timeout(p):g}s (probe hung; abandoned)"
            elif call.error is not None:
                st.duration_seconds = (call.finished or now) - (call.started or now)
                st.error = f"{type(call.error).__name__}: {call.error}"
            else:
                st.duration_seconds = (call.finished or now) - (call.started or now)
                problem = _check_output(p, call.output)
                if problem:
                    st.error = problem
                else:
                    assert isinstance(call.output, ProbeOutput)
                    st.ok = True
                    st.notes = list(call.output.notes)
                    undeclared = call.output.features.names() - set(declared)
                    if undeclared:
                        st.notes.append(
                            f"dropped features the probe does not declare: {', '.join(sorted(undeclared))}"
                        )
                    if type(p).__module__.startswith("nodecompat.probes."):
                        _take(features, call.output.features, declared, taken)
                    else:  # a plugin may keep and change what it returned: copy it
                        features.merge(call.output.features.subset(declared))
                        taken.update(declared)
            statuses[p.name] = st
        for le in self.load_errors:
            statuses[le.name] = ProbeStatus(le.name, ok=False, error=le.error)
        ordered = [statuses[k] for k in sorted(statuses)]
        return ProbeRound(features=features, statuses=ordered, probed_at=datetime.now(UTC))


def _take(into: Features, out: Features, declared: list[str], taken: set[str]) -> None:
    """Move the declared features of a finished probe's output into the round's features.

    For built-in probes only: their output is a fresh object dropped after this, so a feature no earlier probe
    delivered is moved as-is instead of copied element by element (kernel.config has thousands);
    only a feature two probes both deliver is merged (Features.merge: later values win)."""
    keep = set(declared)
    for kind in ("flags", "attributes", "instances"):
        src = getattr(out, kind)
        dst = getattr(into, kind)
        for name, feat in src.items():
            if name not in keep:
                continue
            if name in taken or name in dst:
                into.merge(Features(**{kind: {name: feat}}))
            else:
                dst[name] = feat
            taken.add(name)


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
    runner = ProbeRunner(probes, host, errors, timeout=timeout)
    try:
        return runner.run()
    finally:
        runner.close()
