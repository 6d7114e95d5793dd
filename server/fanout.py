"""Fan one ValidateImage out to many node daemons and account for every node, within a deadline.

Why hand-written rather than a thread pool map: the guarantees are the point. Calls are gRPC futures
driven by one scheduler loop on the caller's thread, so 1,000 nodes cost no threads; at most
`concurrency` are in flight; each node has its own deadline (from its first attempt, `node_timeout`,
never past the overall deadline); UNAVAILABLE (refused, reset, daemon gone) is retried once after a
short backoff when the node's time allows; results are yielded as they complete; and when the overall
deadline comes, everything still queued, backing off or in flight is cancelled and reported as
DEADLINE_EXCEEDED, so the caller is never late and no node is silently dropped.

Channels live in a ChannelPool keyed by address and are reused between calls (connection set-up is
most of the cost of a small RPC). The aggregator prunes the pool on every ValidateFleet and ListNodes
so channels to nodes that left the fleet are closed; an address a call in progress still uses
(`in_use`) is kept until a later prune, so a node leaving never cancels a call already under way.
Each channel is wrapped by telemetry.instrument_channel, so every
attempt opens a CLIENT span and carries W3C trace context; attempts of one node sit under a
`fleet.node` span that is a child of the caller's span.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2_grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from nodecompat.server import telemetry, tls
from nodecompat.server.fleet_nodes import FleetNode
from nodecompat.server.grpc_server import MESSAGE_SIZE_OPTIONS
from nodecompat.v1 import node_pb2, node_pb2_grpc

log = logging.getLogger(__name__)

CHANNEL_OPTIONS: list[tuple[str, object]] = [
    *MESSAGE_SIZE_OPTIONS,
    # A daemon that restarts must be reachable again quickly through the reused channel. (Not
    # grpc.min_reconnect_backoff_ms: gRPC core also uses it as the connect timeout, so a slow peer's
    # handshake would fail as UNAVAILABLE after that long instead of running into the node deadline.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class FanoutConfig:
    concurrency: int = 64
    node_timeout: float = 10.0
    retry_backoff: float = 0.2
    # Do not start (or retry) an attempt with less time than this left for it.
    min_attempt: float = 0.05

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.node_timeout > 0:
            raise ValueError("node timeout must be > 0")


@dataclass
class NodeOutcome:
    """How one node's call ended. `response` is set when status is OK."""

    node: FleetNode
    status: str
    response: node_pb2.ValidateImageResponse | None = None
    error: str = ""
    latency: float = 0.0
    attempts: int = 0


class ChannelPool:
    """One channel (and stubs) per daemon address, reused across fleet calls; thread-safe."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, grpc.Channel]] = {}
        self._busy: Counter[str] = Counter()

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            entry = self._channels.get(address)
            if entry is None:
                raw = tls.open_channel(address, self.credentials, CHANNEL_OPTIONS)
                entry = (raw, telemetry.instrument_channel(raw))
                self._channels[address] = entry
            return entry[1]

    def node_stub(self, address: str) -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.channel(address))

    def health_stub(self, address: str) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel(address))

    def __len__(self) -> int:
        with self._lock:
            return len(self._channels)

    def addresses(self) -> set[str]:
        with self._lock:
            return set(self._channels)

    @contextmanager
    def in_use(self, addresses: Iterable[str]) -> Iterator[None]:
        """Mark addresses as used by a call in progress: prune() keeps their channels meanwhile."""
        held = list(addresses)
        with self._lock:
            self._busy.update(held)
        try:
            yield
        finally:
            with self._lock:
                self._busy.subtract(held)
                self._busy += Counter()  # drop zero counts

    def prune(self, keep: set[str]) -> int:
        """Close channels to addresses not in `keep` (and not in use); returns how many were closed."""
        with self._lock:
            gone = [a for a in self._channels if a not in keep and not self._busy[a]]
            closing = [self._channels.pop(a)[0] for a in gone]
        for ch in closing:
            ch.close()
        return len(closing)

    def close(self) -> None:
        with self._lock:
            closing = [raw for raw, _ in self._channels.values()]
            self._channels.clear()
        for ch in closing:
            ch.close()


@dataclass
class _NodeCall:
    node: FleetNode
    span: trace.Span | None = None
    started: float = 0.0
    node_deadline: float = 0.0
    attempts: int = 0
    future: grpc.Future | None = None
    last_error: tuple[str, str] = ("", "")
    seq: int = field(default_factory=itertools.count().__next__)


class FanOut:
    """Runs one fan-out per run() call; share one FanOut (and its pool) across calls."""

    def __init__(self, pool: ChannelPool, config: FanoutConfig | None = None) -> None:
        self.pool = pool
        self.config = config or FanoutConfig()
        self._tracer = trace.get_tracer(__name__)

    def run(
        self,
        nodes: Sequence[FleetNode],
        request: node_pb2.ValidateImageRequest,
        deadline: float,
        parent: otel_context.Context | None = None,
    ) -> Iterator[NodeOutcome]:
        """Yield one NodeOutcome per node, in completion order, all by `deadline` (time.monotonic())."""
        with self.pool.in_use(n.address for n in nodes):
            yield from self._run(nodes, request, deadline, parent)

    def _run(
        self,
        nodes: Sequence[FleetNode],
        request: node_pb2.ValidateImageRequest,
        deadline: float,
        parent: otel_context.Context | None,
    ) -> Iterator[NodeOutcome]:
        cfg = self.config
        parent = parent if parent is not None else otel_context.get_current()
        events: queue.SimpleQueue[tuple[_NodeCall, grpc.Future]] = queue.SimpleQueue()
        pending: deque[_NodeCall] = deque(_NodeCall(n) for n in nodes)
        backoff: list[tuple[float, int, _NodeCall]] = []
        inflight: dict[int, _NodeCall] = {}
        remaining = len(pending)

        def launch(call: _NodeCall, now: float) -> NodeOutcome | None:
            if call.attempts == 0:
                call.started = now
                call.node_deadline = min(deadline, now + cfg.node_timeout)
                call.span = self._tracer.start_span(
                    f"fleet.node {call.node.name}",
                    context=parent,
                    attributes={
                        "nodecompat.node.name": call.node.name,
                        "nodecompat.node.address": call.node.address,
                    },
                )
            budget = call.node_deadline - now
            if budget < cfg.min_attempt:
                return self._finish(call, now, "DEADLINE_EXCEEDED", "no time left for this node", None)
            call.attempts += 1
            try:
                stub = self.pool.node_stub(call.node.address)
                assert call.span is not None
                with trace.use_span(call.span, end_on_exit=False):
                    fut = stub.ValidateImage.future(request, timeout=budget)
            except Exception as exc:  # a bad target string, a closed channel: this node fails, not the call
                return self._finish(call, now, "INTERNAL", f"cannot call {call.node.address}: {exc}", None)
            call.future = fut
            inflight[call.seq] = call
            fut.add_done_callback(lambda f, c=call: events.put((c, f)))
            return None

        try:
            while remaining:
                now = time.monotonic()
                if now >= deadline:
                    break
                while len(inflight) < cfg.concurrency and ((backoff and backoff[0][0] <= now) or pending):
                    due_retry = bool(backoff) and backoff[0][0] <= now  # retries go before new nodes
                    call = heapq.heappop(backoff)[2] if due_retry else pending.popleft()
                    finished = launch(call, now)
                    if finished is not None:
                        remaining -= 1
                        yield finished
                if not remaining:
                    break
                wake = min(deadline, backoff[0][0]) if backoff else deadline
                try:
                    call, fut = events.get(timeout=max(0.0, wake - time.monotonic()))
                except queue.Empty:
                    continue
                if inflight.pop(call.seq, None) is None:
                    continue
                now = time.monotonic()
                outcome = self._settle(call, fut, now, backoff)
                if outcome is not None:
                    remaining -= 1
                    yield outcome
            now = time.monotonic()
            for call in [*inflight.values(), *(c for _, _, c in backoff), *pending]:
                if call.future is not None and call.seq in inflight:
                    call.future.cancel()
                msg = "the fleet deadline passed before this node answered"
                if call.attempts == 0:
                    msg = "the fleet deadline passed before this node's turn (raise --concurrency or --timeout)"
                elif call.last_error[0]:
                    msg += f" (previous attempt: {call.last_error[0]}: {call.last_error[1]})"
                yield self._finish(call, now, "DEADLINE_EXCEEDED", msg, None)
            inflight.clear()
            backoff.clear()
            pending.clear()
        finally:  # the consumer went away (client cancelled): stop the node calls and close their spans
            for call in [*inflight.values(), *(c for _, _, c in backoff)]:
                if call.future is not None and call.seq in inflight:
                    call.future.cancel()
                if call.span is not None:
                    call.span.end()
                    call.span = None

    def _settle(
        self, call: _NodeCall, fut: grpc.Future, now: float, backoff: list[tuple[float, int, _NodeCall]]
    ) -> NodeOutcome | None:
        if fut.cancelled():
            return self._finish(call, now, "CANCELLED", "call cancelled", None)
        exc = fut.exception()
        if exc is None:
            return self._finish(call, now, "OK", "", fut.result())
        code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        call.last_error = (code.name, details)
        retry_at = now + self.config.retry_backoff
        if (
            code == grpc.StatusCode.UNAVAILABLE
            and call.attempts < MAX_ATTEMPTS
            and call.node_deadline - retry_at >= self.config.min_attempt
        ):
            if call.span is not None:
                call.span.add_event("retry", {"after_status": code.name, "backoff_s": self.config.retry_backoff})
            heapq.heappush(backoff, (retry_at, call.seq, call))
            return None
        return self._finish(call, now, code.name, details, None)

    @staticmethod
    def _finish(
        call: _NodeCall, now: float, status: str, error: str, response: node_pb2.ValidateImageResponse | None
    ) -> NodeOutcome:
        if call.span is not None:
            call.span.set_attribute("nodecompat.node.status", status)
            call.span.set_attribute("nodecompat.node.attempts", call.attempts)
            if status != "OK":
                call.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{status}: {error}"[:200]))
            call.span.end()
            call.span = None
        return NodeOutcome(
            node=call.node,
            status=status,
            response=response,
            error=error,
            latency=max(0.0, now - call.started) if call.started else 0.0,
            attempts=call.attempts,
        )
