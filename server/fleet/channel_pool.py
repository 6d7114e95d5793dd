"""ChannelPool: one grpc.aio channel per node daemon address, reused across fleet calls, on one event loop.

Channels live in a ChannelPool keyed by address and are reused between calls (connection set-up is
most of the cost of a small RPC). The pool owns an event loop on one thread (all its channels belong to
that loop); the fan-out (server/fleet/fanout.py) runs its calls there. The aggregator prunes the pool on every
ValidateFleet and ListNodes so channels to nodes that left the fleet are closed; an address a call in
progress still uses (`in_use`) is kept until a later prune, so a node leaving never cancels a call
already under way. Health/Check of nodes (ListNodes, first checks) goes through the same channels.
Channels unused for `idle_close` seconds (and with no call in flight or in progress) are closed by a
sweep on the pool's loop: a connected channel costs ~35 KiB in gRPC core, and the daemons close
connections idle for 30 s themselves (server/limits.py MAX_CONNECTION_IDLE), so a channel kept longer
holds memory and no warm connection. glibc keeps the heap pages freed by closed connections, so after a
sweep that closed many the pool asks it to return them (server/runtime/malloc_tuning.py malloc_trim).
With `h2` options the pool's channels are the lean HTTP/2 client's (server/h2/unary.py H2Channel: ~4 KiB a kept
connection, H2_CONNECTION_BYTES, instead of ~36; the aggregator's --fanout-transport h2): the same entries, budget
(in bytes), idle sweep, pruning and health checks. Split out of server/fleet/fanout.py, which re-exports these names.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from nodecompat.server.limits import (  # (their measurements are there)
    CONNECTION_BYTES,
    H2_CONNECTION_BYTES,
    H2_TLS_CONNECTION_BYTES,
    MAX_POOL_BYTES,
)
from nodecompat.server.runtime.grpc_server import MESSAGE_SIZE_OPTIONS
from nodecompat.server.runtime.malloc_tuning import malloc_trim
from nodecompat.v1 import node_pb2

if TYPE_CHECKING:
    from nodecompat.server.h2.call import H2Options

log = logging.getLogger("nodecompat.server.fleet.fanout")  # the fan-out's log, as before the split
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
    # TLS records this side writes of at most 4 KiB (16 KiB by default): gRPC's SSL frame protector keeps a buffer
    # of that size per connection for what the aggregator sends (ValidateImage requests, HTTP/2 control frames);
    # answers are the node's records, unaffected. bench/channel_args.py --tls, 2,000 channels, a channel after one
    # call: 91.7-92.0k -> 87.7-87.8k (1 KiB, the subscriptions' choice: 85.0-85.1k, but a 1 MiB spec then costs
    # ~0.5-0.8 ms more client CPU a node in 1,024 records; at 4 KiB no difference measured from 300 B to 1 MiB).
    ("grpc.tsi.max_frame_size", 4096),
]
MAX_CHANNELS = MAX_POOL_BYTES // CONNECTION_BYTES
# Close pooled channels unused this long: twice the daemons' own idle limit (their side of an idle
# connection is gone after 30 s, so a channel kept longer is memory without a warm connection).
IDLE_CLOSE = 60.0
TRIM_AFTER = 64  # return freed heap pages to the OS after a sweep that closed at least this many channels
TRIM_DELAY = 1.0  # s after the closes: gRPC core tears connections down on its own threads shortly after


VALIDATE_METHOD = "/nodecompat.v1.NodeService/ValidateImage"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"

class PoolEntry:
    """A pooled channel, the two method callables made on it once, and its calls in flight."""

    __slots__ = ("_health", "channel", "inflight", "transient", "used", "validate")

    def __init__(self, channel: Any, transient: bool = False) -> None:
        """channel: a grpc.aio.Channel, or an H2Channel (server/h2/unary.py: the same unary_unary and close)."""
        self.channel = channel
        self.transient = transient  # made past the pool's budget: closed once its call ends (release)
        self.inflight = 0
        self.used = time.monotonic()  # last handed out (idle closing)
        self.validate = channel.unary_unary(
            VALIDATE_METHOD,
            request_serializer=node_pb2.ValidateImageRequest.SerializeToString,
            response_deserializer=node_pb2.ValidateImageResponse.FromString,
        )
        self._health: Any = None

    @property
    def health(self) -> Any:
        """Health/Check on this channel (made on first use: most fan-outs never check health)."""
        if self._health is None:
            self._health = self.channel.unary_unary(
                HEALTH_METHOD,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
        return self._health


class ChannelPool:
    """One grpc.aio channel per daemon address, reused across fleet calls, on the pool's own event loop.

    A connected channel costs ~36 KiB (CONNECTION_BYTES), so at most `max_bytes` worth (`max_channels`) are
    kept: past that, a call gets a channel of its own, closed when the call ends, and the pooled ones stay.
    Not least-recently-used eviction: a fan-out visits the fleet in the same order every time, so closing
    the least recently used would close exactly the channels the next fan-out needs first, and no call
    would ever find its channel warm; this way the first max_channels nodes stay connected and only the
    rest reconnect (memory stays bounded; idle channels still go after idle_close, making room).
    Thread-safe: any thread may ask for a channel, prune or close; channels are made and closed on the
    loop thread (started on first use)."""

    def __init__(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        max_channels: int | None = None,
        idle_close: float = IDLE_CLOSE,
        max_bytes: int = MAX_POOL_BYTES,
        loop: asyncio.AbstractEventLoop | None = None,
        h2: H2Options | None = None,
    ) -> None:
        """max_bytes: the pool's budget (bytes, CONNECTION_BYTES per channel; with `h2` H2_CONNECTION_BYTES, under
        TLS H2_TLS_CONNECTION_BYTES) unless max_channels (a count) is given; h2: channels of the lean HTTP/2
        client with these options (TLS, sizes) instead of grpc.aio's (`credentials` is then unused); idle_close:
        seconds a channel may go unused before a sweep closes it (> 0); loop: run on this event loop, running on
        a thread of the caller's (e.g. the server's own), instead of starting one.
        grpc.aio hands each completion to the loops it knows through one socket all of them watch, and
        forwards it (call_soon_threadsafe) when the one that read it does not own the call: with the fan-out
        on the server's loop, a node's answer wakes one thread, not two or three."""
        if max_channels is None:
            unit = CONNECTION_BYTES if h2 is None else H2_TLS_CONNECTION_BYTES if h2.ssl else H2_CONNECTION_BYTES
            max_channels = max_bytes // unit
        if max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        if not idle_close > 0:
            raise ValueError("idle_close must be > 0")
        self.credentials = credentials
        self.h2 = h2
        self.max_channels = max_channels
        self.idle_close = idle_close
        self._sweep: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, PoolEntry] = OrderedDict()
        self._closing: set[asyncio.Future[None]] = set()
        self._busy: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = loop
        self._external = loop  # not ours: never stopped or joined here
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The pool's event loop (the one given, or its own on a daemon thread, started on first use)."""
        with self._lock:
            if self._external is not None:
                return self._external
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
        if self.on_loop():
            raise RuntimeError("ChannelPool.call from the pool's loop thread would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    # -- channels ------------------------------------------------------------------------------
    def entry(self, address: str) -> PoolEntry:
        """The pooled channel of `address` (made on first use); call on the pool's loop. When the pool is
        full, a transient entry (`transient` True, not pooled): its caller hands it back with release()
        once its call has ended, and its channel is closed then."""
        with self._lock:
            e = self._entries.get(address)
            if e is not None:
                self._entries.move_to_end(address)
                e.used = time.monotonic()
                return e
            full = len(self._entries) >= self.max_channels
            if not full and self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(self.idle_close / 2, self._sweep_idle)
        ch: Any
        if self.h2 is not None:
            from nodecompat.server.h2.unary import H2Channel

            ch = H2Channel(address, self.h2)
        elif self.credentials is None:
            ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            ch = grpc.aio.secure_channel(address, self.credentials, options=CHANNEL_OPTIONS)
        if full:
            return PoolEntry(ch, transient=True)
        with self._lock:
            e = self._entries.get(address)
            if e is None:  # (another thread may have pooled one meanwhile)
                e = self._entries[address] = PoolEntry(ch)
                return e
        self._spawn_close([ch], trim=False)
        return e

    def release(self, entry: PoolEntry) -> None:
        """Hand back an entry from entry() whose call has ended: a transient one's channel is closed (on
        the pool's loop); a pooled one stays. Call on the pool's loop."""
        if entry.transient:
            self._spawn_close([entry.channel], trim=False)

    def _sweep_idle(self) -> None:
        """The periodic sweep (on the loop): close idle channels; runs while the pool has any."""
        self._sweep = None
        closed = self._take_idle(self.idle_close)
        with self._lock:
            if self._entries and self._sweep is None and self._loop is not None:
                self._sweep = self._loop.call_later(self.idle_close / 2, self._sweep_idle)
        if closed:
            self._spawn_close(closed, trim=len(closed) >= TRIM_AFTER)

    def _take_idle(self, older_than: float) -> list[grpc.aio.Channel]:
        """Take out of the pool the channels unused for `older_than` s, with no call in flight or in progress."""
        cutoff = time.monotonic() - older_than
        with self._lock:
            gone = [a for a, e in self._entries.items() if e.used <= cutoff and not e.inflight and not self._busy[a]]
            return [self._entries.pop(a).channel for a in gone]

    def close_idle(self, older_than: float | None = None) -> int:
        """Close now the channels unused for `older_than` s (default idle_close) with no call in flight or
        in progress, as the periodic sweep does (freed heap pages go back TRIM_DELAY s later); how many."""
        closing = self._take_idle(self.idle_close if older_than is None else older_than)
        self._close(closing)
        loop = self._loop
        if closing and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.call_later, TRIM_DELAY, malloc_trim)
        return len(closing)

    def _spawn_close(self, channels: list[grpc.aio.Channel], trim: bool) -> None:
        """Close channels in the background (on the loop), then trim the heap if asked."""

        async def close_all() -> None:
            await asyncio.gather(*(ch.close() for ch in channels), return_exceptions=True)
            if trim:
                asyncio.get_running_loop().call_later(TRIM_DELAY, malloc_trim)

        task = asyncio.ensure_future(close_all())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def channel(self, address: str) -> grpc.aio.Channel:
        """The pooled channel of `address`, from any thread (channels connect lazily). Unused for
        idle_close seconds and not held by in_use(), it is closed by the sweep (ask again then). When the
        pool is full, a channel of the caller's own, for the caller to close."""
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
            sweep, self._sweep = self._sweep, None
        if loop is None or loop.is_closed():
            return
        if sweep is not None:
            loop.call_soon_threadsafe(sweep.cancel)
        if self._external is not None:  # the caller's loop: close the channels while it runs, leave it be
            if loop.is_running():
                self._close(closing, loop)
            else:  # it stopped first (the server's, at shutdown): no call can be in flight; close them now
                for ch in closing:
                    if hasattr(ch, "close_now"):  # an H2Channel: its socket closed at once
                        ch.close_now()
                        continue
                    core = getattr(ch, "_channel", None)  # grpc.aio's AioChannel: close() is synchronous
                    if core is not None and not core.closed():
                        core.close()
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
                self.release(entry)

        return dict(await asyncio.gather(*(one(a) for a in addresses)))

    def check_health(self, addresses: Sequence[str], timeout: float) -> dict[str, str]:
        """acheck_health from a thread that is not the pool's loop."""
        with self.in_use(addresses):
            return self.call(self.acheck_health(addresses, timeout))

