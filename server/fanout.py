"""Fan one ValidateImage out to many node daemons and account for every node, within a deadline.

Why hand-written rather than a pool map: the guarantees are the point. Calls are grpc.aio calls
driven by one scheduler coroutine on the pool's event loop, so 10,000 nodes cost no threads (a sync
gRPC channel starts a polling thread per idle channel; aio channels share the loop); at most
`concurrency` are in flight; each node has its own deadline (from its first attempt, `node_timeout`,
never past the overall deadline); UNAVAILABLE (refused, reset, daemon gone) is retried once after a
short backoff when the node's time allows, and due retries go before new nodes; results are yielded
as they complete; and when the overall deadline comes, everything still queued, backing off or in
flight is cancelled and reported as DEADLINE_EXCEEDED, so the caller is never late and no node is
silently dropped.

Channels live in a ChannelPool keyed by address and are reused between calls (connection set-up is
most of the cost of a small RPC). The pool owns an event loop on one thread (all its channels belong to
that loop); FanOut.run() is the blocking iterator for sync servicers, FanOut.stream() the async one
(usable from any loop). The aggregator prunes the pool on every ValidateFleet and ListNodes so channels
to nodes that left the fleet are closed; an address a call in progress still uses (`in_use`) is kept
until a later prune, so a node leaving never cancels a call already under way.

Tracing costs nothing when it is off. When the caller's span is recording, attempts of one node sit
under a `fleet.node` span that is a child of the caller's span, and each attempt opens a CLIENT span
(named like the OpenTelemetry gRPC instrumentation's) and sends W3C trace context in its metadata.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from nodecompat.server.fleet_nodes import FleetNode
from nodecompat.server.grpc_server import MESSAGE_SIZE_OPTIONS
from nodecompat.v1 import node_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL_OPTIONS: list[tuple[str, object]] = [
    *MESSAGE_SIZE_OPTIONS,
    # A daemon that restarts must be reachable again quickly through the reused channel. (Not
    # grpc.min_reconnect_backoff_ms: gRPC core also uses it as the connect timeout, so a slow peer's
    # handshake would fail as UNAVAILABLE after that long instead of running into the node deadline.)
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # channelz keeps per-channel/subchannel/socket trace nodes: ~3.5 KiB of each pooled connection's ~35.
    ("grpc.enable_channelz", 0),
]
MAX_ATTEMPTS = 2
MAX_CHANNELS = 16384  # pooled connections (~35 KiB each in gRPC core): ~560 MiB at most
VALIDATE_METHOD = "/nodecompat.v1.NodeService/ValidateImage"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"


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


class _Entry:
    """A pooled channel, the two method callables made on it once, and its calls in flight."""

    __slots__ = ("channel", "health", "inflight", "validate")

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.inflight = 0
        self.validate = channel.unary_unary(
            VALIDATE_METHOD,
            request_serializer=node_pb2.ValidateImageRequest.SerializeToString,
            response_deserializer=node_pb2.ValidateImageResponse.FromString,
        )
        self.health = channel.unary_unary(
            HEALTH_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )


class ChannelPool:
    """One grpc.aio channel per daemon address, reused across fleet calls, on the pool's own event loop.

    A connected channel costs ~35 KiB in gRPC core (transport, buffers), so at most `max_channels` are
    kept: past that, the least recently used channel with no call in flight is closed to make room
    (a fleet larger than the cap reconnects to the nodes it reaches last; memory stays bounded).
    Thread-safe: any thread may ask for a channel, prune or close; channels are made and closed on the
    loop thread (started on first use)."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None, max_channels: int = MAX_CHANNELS) -> None:
        if max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        self.credentials = credentials
        self.max_channels = max_channels
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()
        self._busy: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The pool's event loop (running on its own daemon thread, started on first use)."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=serve, name="fanout-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def on_loop(self) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the pool's loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    # -- channels ------------------------------------------------------------------------------
    def entry(self, address: str) -> _Entry:
        """The pooled channel of `address` (made on first use); call on the pool's loop."""
        with self._lock:
            e = self._entries.get(address)
            if e is not None:
                self._entries.move_to_end(address)
                return e
            evicted = self._evict_locked(len(self._entries) + 1 - self.max_channels)
            if self.credentials is None:
                ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.secure_channel(address, self.credentials, options=CHANNEL_OPTIONS)
            e = self._entries[address] = _Entry(ch)
        for old in evicted:
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return e

    def _evict_locked(self, count: int) -> list[grpc.aio.Channel]:
        """Take the `count` least recently used channels with no call in flight out of the pool."""
        out: list[grpc.aio.Channel] = []
        if count <= 0:
            return out
        for address in list(self._entries):
            e = self._entries[address]
            if e.inflight:
                continue
            del self._entries[address]
            out.append(e.channel)
            if len(out) >= count:
                break
        return out

    def channel(self, address: str) -> grpc.aio.Channel:
        """The pooled channel of `address`, from any thread (channels connect lazily)."""
        if self.on_loop():
            return self.entry(address).channel

        async def make() -> grpc.aio.Channel:
            return self.entry(address).channel

        return self.call(make())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def addresses(self) -> set[str]:
        with self._lock:
            return set(self._entries)

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
            gone = [a for a in self._entries if a not in keep and not self._busy[a]]
            closing = [self._entries.pop(a).channel for a in gone]
        self._close(closing)
        return len(closing)

    def close(self) -> None:
        with self._lock:
            closing = [e.channel for e in self._entries.values()]
            self._entries.clear()
            loop, self._loop = self._loop, None
        if loop is None:
            return
        self._close(closing, loop)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _close(self, channels: list[grpc.aio.Channel], loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not channels:
            return
        loop = loop or self._loop
        if loop is None or loop.is_closed():
            return

        async def close_all() -> None:
            await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(close_all(), loop)
        if not self.on_loop():
            try:
                fut.result(5)
            except Exception:  # closing is best effort
                log.debug("closing channels", exc_info=True)

    # -- health --------------------------------------------------------------------------------
    async def acheck_health(self, addresses: Sequence[str], timeout: float) -> dict[str, str]:
        """Health/Check each address concurrently (on the pool's loop): address -> SERVING, NOT_SERVING,
        or the gRPC status code name of the failure (UNAVAILABLE, DEADLINE_EXCEEDED, ...)."""

        async def one(address: str) -> tuple[str, str]:
            try:
                entry = self.entry(address)
            except Exception as exc:  # a bad target string: this node fails, not the call
                log.warning("health check of %s: %s", address, exc)
                return address, "INTERNAL"
            entry.inflight += 1
            try:
                resp = await entry.health(health_pb2.HealthCheckRequest(), timeout=timeout)
                return address, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.aio.AioRpcError as exc:
                return address, exc.code().name
            except Exception as exc:
                log.warning("health check of %s: %s", address, exc)
                return address, "INTERNAL"
            finally:
                entry.inflight -= 1

        return dict(await asyncio.gather(*(one(a) for a in addresses)))

    def check_health(self, addresses: Sequence[str], timeout: float) -> dict[str, str]:
        """acheck_health from a thread that is not the pool's loop."""
        with self.in_use(addresses):
            return self.call(self.acheck_health(addresses, timeout))


@dataclass
class _NodeCall:
    node: FleetNode
    span: trace.Span | None = None
    started: float = 0.0
    node_deadline: float = 0.0
    attempts: int = 0
    task: asyncio.Task[Any] | None = None
    last_error: tuple[str, str] = ("", "")
    seq: int = field(default_factory=itertools.count().__next__)


_Event = tuple[_NodeCall, str, str, "node_pb2.ValidateImageResponse | None"]  # call, code, details, response


class FanOut:
    """Runs one fan-out per run()/stream() call; share one FanOut (and its pool) across calls."""

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
        """Yield one NodeOutcome per node, in completion order, all by `deadline` (time.monotonic()).

        Blocking; for threads other than the pool's loop. Closing the iterator early cancels the calls."""
        parent = parent if parent is not None else otel_context.get_current()
        out: queue.SimpleQueue[NodeOutcome | BaseException | None] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for outcome in self._run(nodes, request, deadline, parent):
                    out.put(outcome)
            except BaseException as exc:
                out.put(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                out.put(None)

        with self.pool.in_use(n.address for n in nodes):
            fut = asyncio.run_coroutine_threadsafe(pump(), self.pool.loop)
            try:
                while True:
                    item = out.get()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if not fut.done():
                    fut.cancel()

    async def stream(
        self,
        nodes: Sequence[FleetNode],
        request: node_pb2.ValidateImageRequest,
        deadline: float,
        parent: otel_context.Context | None = None,
    ) -> AsyncIterator[NodeOutcome]:
        """run() for coroutines: on the pool's loop directly, from another loop through a queue."""
        parent = parent if parent is not None else otel_context.get_current()
        with self.pool.in_use(n.address for n in nodes):
            if self.pool.on_loop():
                async for outcome in self._run(nodes, request, deadline, parent):
                    yield outcome
                return
            here = asyncio.get_running_loop()
            out: asyncio.Queue[NodeOutcome | BaseException | None] = asyncio.Queue()

            def put(item: NodeOutcome | BaseException | None) -> None:
                here.call_soon_threadsafe(out.put_nowait, item)

            async def pump() -> None:
                try:
                    async for outcome in self._run(nodes, request, deadline, parent):
                        put(outcome)
                except Exception as exc:
                    put(exc)
                else:
                    put(None)

            fut = asyncio.run_coroutine_threadsafe(pump(), self.pool.loop)
            try:
                while True:
                    item = await out.get()
                    if item is None:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if not fut.done():
                    fut.cancel()

    async def _run(
        self,
        nodes: Sequence[FleetNode],
        request: node_pb2.ValidateImageRequest,
        deadline: float,
        parent: otel_context.Context,
    ) -> AsyncIterator[NodeOutcome]:
        cfg = self.config
        traced = trace.get_current_span(parent).is_recording()
        events: deque[_Event] = deque()
        loop = asyncio.get_running_loop()
        waiter: list[asyncio.Future[None] | None] = [None]  # the scheduler's current wait, if any

        def wake() -> None:
            w = waiter[0]
            if w is not None and not w.done():
                w.set_result(None)
        pending: deque[_NodeCall] = deque(_NodeCall(n) for n in nodes)
        backoff: list[tuple[float, int, _NodeCall]] = []
        inflight: dict[int, _NodeCall] = {}
        remaining = len(pending)
        payload = request  # serialized by the channel once per attempt

        def settle(call: _NodeCall, code: str, details: str, resp: node_pb2.ValidateImageResponse | None) -> None:
            events.append((call, code, details, resp))
            wake()

        def launch(call: _NodeCall, now: float) -> NodeOutcome | None:
            if call.attempts == 0:
                call.started = now
                call.node_deadline = min(deadline, now + cfg.node_timeout)
                if traced:
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
                entry = self.pool.entry(call.node.address)
            except Exception as exc:  # a bad target string: this node fails, not the call
                return self._finish(call, now, "INTERNAL", f"cannot call {call.node.address}: {exc}", None)
            call.task = asyncio.ensure_future(self._attempt(call, entry, payload, budget, settle))
            inflight[call.seq] = call
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
                if not events:
                    until = min(deadline, backoff[0][0]) if backoff else deadline
                    w = waiter[0] = loop.create_future()
                    timer = loop.call_later(max(0.0, until - time.monotonic()), wake)
                    try:
                        await w
                    finally:
                        timer.cancel()
                        waiter[0] = None
                    if not events:
                        continue
                now = time.monotonic()
                while events:
                    call, code, details, resp = events.popleft()
                    if inflight.pop(call.seq, None) is None:
                        continue
                    call.task = None
                    outcome = self._settle(call, code, details, resp, now, backoff)
                    if outcome is not None:
                        remaining -= 1
                        yield outcome
            now = time.monotonic()
            for call in [*inflight.values(), *(c for _, _, c in backoff), *pending]:
                if call.task is not None and call.seq in inflight:
                    call.task.cancel()
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
                if call.task is not None and call.seq in inflight:
                    call.task.cancel()
                if call.span is not None:
                    call.span.end()
                    call.span = None

    async def _attempt(
        self,
        call: _NodeCall,
        entry: _Entry,
        request: node_pb2.ValidateImageRequest,
        budget: float,
        settle: Callable[[_NodeCall, str, str, node_pb2.ValidateImageResponse | None], None],
    ) -> None:
        entry.inflight += 1  # the pool does not close a channel with a call in flight
        try:
            await self._attempt_on(call, entry.validate, request, budget, settle)
        finally:
            entry.inflight -= 1

    async def _attempt_on(
        self,
        call: _NodeCall,
        method: grpc.aio.UnaryUnaryMultiCallable,
        request: node_pb2.ValidateImageRequest,
        budget: float,
        settle: Callable[[_NodeCall, str, str, node_pb2.ValidateImageResponse | None], None],
    ) -> None:
        if call.span is None:  # tracing off: nothing but the call
            try:
                resp = await method(request, timeout=budget)
            except grpc.aio.AioRpcError as exc:
                settle(call, exc.code().name, exc.details() or "", None)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                settle(call, "UNKNOWN", str(exc), None)
                return
            settle(call, "OK", "", resp)
            return
        ctx = trace.set_span_in_context(call.span)
        span = self._tracer.start_span(
            VALIDATE_METHOD,
            context=ctx,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "nodecompat.v1.NodeService",
                "rpc.method": "ValidateImage",
                "net.peer.name": call.node.address.rpartition(":")[0],
                "net.peer.port": call.node.address.rpartition(":")[2],
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span, ctx))
        code, details, resp = "OK", "", None
        try:
            resp = await method(request, timeout=budget, metadata=tuple(carrier.items()))
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        except asyncio.CancelledError:
            code, details = "CANCELLED", "call cancelled"
            raise
        except Exception as exc:
            code, details = "UNKNOWN", str(exc)
        finally:
            span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
            if code != "OK":
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code}: {details}"[:200]))
            span.end()
        settle(call, code, details, resp)

    def _settle(
        self,
        call: _NodeCall,
        code: str,
        details: str,
        resp: node_pb2.ValidateImageResponse | None,
        now: float,
        backoff: list[tuple[float, int, _NodeCall]],
    ) -> NodeOutcome | None:
        if code == "OK":
            return self._finish(call, now, "OK", "", resp)
        call.last_error = (code, details)
        retry_at = now + self.config.retry_backoff
        if (
            code == "UNAVAILABLE"
            and call.attempts < MAX_ATTEMPTS
            and call.node_deadline - retry_at >= self.config.min_attempt
        ):
            if call.span is not None:
                call.span.add_event("retry", {"after_status": code, "backoff_s": self.config.retry_backoff})
            heapq.heappush(backoff, (retry_at, call.seq, call))
            return None
        return self._finish(call, now, code, details, None)

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
