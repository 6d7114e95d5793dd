"""Unary gRPC calls on the lean HTTP/2 client: one connection per node address, calls multiplexed on it.

Why hand-written: the aggregator's fan-out keeps a connection to each node warm between fan-outs, and a
connected gRPC core channel costs ~30 KiB whatever its arguments (server/limits.py CONNECTION_BYTES); an
H2Channel with its connection (server/h2/mux.py), asyncio transport and socket ~3 KiB (H2_CONNECTION_BYTES).
H2Channel quacks like the part of grpc.aio.Channel the fan-out's pool uses (server/fleet/channel_pool.py):

    ch = H2Channel("10.0.0.7:50051", options)      # nothing connects yet
    validate = ch.unary_unary(METHOD, request_serializer=Req.SerializeToString,
                              response_deserializer=Resp.FromString)
    resp = await validate(request, timeout=2.5, metadata=(("traceparent", "00-..."),))
    await ch.close()

Calls: the first call connects (TCP, TLS over memory BIOs with ALPN h2, the node's SETTINGS) within
options.connect_timeout and the call's own deadline; later calls reuse the connection, several at once (one
stream each, within the node's SETTINGS_MAX_CONCURRENT_STREAMS: callers past it wait for a slot within their
deadline). A connection that ends (closed, GOAWAY, a protocol error) fails its open calls and the next call makes
a new one. Each call's deadline is sent as grpc-timeout and kept here (RST_STREAM CANCEL at the deadline): the
node cannot stretch it. A task cancelled during its call resets the stream. Tracing: the caller passes W3C trace
context as metadata (the fan-out's attempt makes the CLIENT span, server/fleet/node_call.py), as with grpc.aio.

Errors: H2WatchError (server/h2/call.py), a grpc.aio.AioRpcError with the grpc.StatusCode gRPC core gives:
DEADLINE_EXCEEDED (the call's deadline), UNAVAILABLE (connect/TLS failure, connection closed or going away),
RESOURCE_EXHAUSTED (a message over options.max_message either way), the trailers' grpc-status and
grpc-message, RST_STREAM's code as mapped by the gRPC spec, INTERNAL for protocol errors and a response that
does not parse. Memory: per call the request until the node's windows take it, the response (<= max_message);
per idle connection its objects only (no buffer keeps capacity between calls).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import hpack

from nodecompat.server.h2.call import H2Options, H2WatchError
from nodecompat.server.h2.mux import H2Mux
from nodecompat.server.h2.streams import Stream, _coders


def encoder() -> hpack.Encoder:
    """This thread's header encoder: a 0-byte table (every header a literal, nothing remembered)."""
    enc = getattr(_coders, "enc", None)
    if enc is None:
        enc = _coders.enc = hpack.Encoder()
        enc.header_table_size = 0
        enc.encode([])  # the table-size update is sent once per connection by H2Mux, not in every block
    return enc


_PSEUDO: dict[tuple[str, bool], bytes] = {}  # (method, TLS) -> :method, :scheme, :path encoded (a few methods)
_TAIL = b""


def _static(method: str, tls: bool) -> bytes:
    block = _PSEUDO.get((method, tls))
    if block is None:
        block = _PSEUDO[(method, tls)] = encoder().encode(
            [(":method", "POST"), (":scheme", "https" if tls else "http"), (":path", method)])
    return block


def _tail() -> bytes:
    global _TAIL
    if not _TAIL:
        _TAIL = encoder().encode([("te", "trailers"), ("content-type", "application/grpc"),
                                  ("user-agent", "nodecompat-h2")])
    return _TAIL


class H2Channel:
    """The lean client's channel to one address (see the module docstring); on one event loop."""

    __slots__ = ("address", "authority", "conn", "opts")

    def __init__(self, address: str, options: H2Options) -> None:
        self.address, self.opts = address, options
        self.conn: H2Mux | None = None
        self.authority = b""  # :authority, encoded on first use

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes],
                    response_deserializer: Callable[[bytes], Any]) -> H2Method:
        return H2Method(self, method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        """Close the connection (open calls end UNAVAILABLE); the channel may connect again if called."""
        self.close_now()

    def close_now(self) -> None:
        """close() for a loop that is not running: the socket is closed at once."""
        conn, self.conn = self.conn, None
        if conn is not None:
            transport = conn.transport
            conn.close()
            sock = getattr(transport, "_sock", None)
            loop = getattr(transport, "_loop", None)
            if sock is not None and loop is not None and not loop.is_running():  # nobody runs the close
                sock.close()

    def closed(self) -> bool:
        """Whether no connection is open (none made yet, or the last one ended)."""
        return self.conn is None or self.conn.transport is None

    def connected(self) -> bool:
        return self.conn is not None and self.conn.transport is not None and self.conn.usable()

    async def call(self, method: str, body: bytes, timeout: float | None, metadata: Sequence[tuple[str, str]] | None,
                   deserialize: Callable[[bytes], Any]) -> Any:
        """One unary call: `body` is the serialized request; returns the deserialized response."""
        if len(body) > self.opts.max_message:
            raise H2WatchError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Sent message larger than max ({len(body)} vs. "
                               f"{self.opts.max_message})")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        conn = self.conn
        if conn is None or not conn.usable() or not conn.ready.done():
            conn = await self._connection(loop, deadline)
        if not conn.has_slot():
            await self._slot(conn, loop, deadline)
            if not conn.usable() and conn.error is None:  # going away while we waited: this call was never sent,
                conn = await self._connection(loop, deadline)  # so it goes to a new connection (as gRPC core's)
                if not conn.has_slot():
                    await self._slot(conn, loop, deadline)
        if not conn.usable():  # it ended (or is going away) while we waited: the next call makes a new one
            raise conn.error or H2WatchError(grpc.StatusCode.UNAVAILABLE, f"{self.address} is going away")
        fut: asyncio.Future[bytes] = loop.create_future()
        extra = [("grpc-timeout", f"{max(1, int((deadline - loop.time()) * 1000))}m")] if deadline is not None else []
        if metadata:
            extra.extend((k.lower(), v) for k, v in metadata)
        if not self.authority:
            self.authority = encoder().encode([(":authority", self.opts.authority or self.address)])
        block = _static(method, self.opts.ssl is not None) + self.authority + _tail()
        s = conn.open_stream(fut, block + encoder().encode(extra, huffman=False) if extra else block,
                             b"\x00" + len(body).to_bytes(4, "big") + body)
        if deadline is not None and not fut.done():
            s.timer = loop.call_at(deadline, conn.abort_stream, s, grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "Deadline Exceeded")
        try:
            data = await fut
        except asyncio.CancelledError:
            conn.abort_stream(s, grpc.StatusCode.CANCELLED, "call cancelled")
            raise
        try:
            return deserialize(data)
        except Exception as exc:
            raise H2WatchError(grpc.StatusCode.INTERNAL, f"the node's message cannot be parsed: {exc}") from None

    async def _connection(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> H2Mux:
        """The usable connection, made now when there is none (this caller's deadline bounds its wait)."""
        conn = self.conn
        if conn is not None and conn.usable():
            await _until(conn.ready, loop, deadline)
            return conn
        if conn is not None:  # ids used up, or going away: it closes once its calls end
            conn.goaway = True
            if conn.idle():
                conn.close()
        ready: asyncio.Future[None] = loop.create_future()
        conn = self.conn = H2Mux(self.address, self.opts, ready)
        expire = loop.call_later(self.opts.connect_timeout, _connect_expired, conn)
        ready.add_done_callback(lambda _: expire.cancel())
        host, _, port = self.address.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        limit = self.opts.connect_timeout if deadline is None else min(self.opts.connect_timeout,
                                                                      deadline - loop.time())
        try:
            async with asyncio.timeout(max(limit, 0.0)):  # not wait_for: it can lose a cancellation (connection.py)
                await loop.create_connection(lambda: conn, host, int(port))
        except (TimeoutError, OSError, ValueError) as exc:
            late = deadline is not None and loop.time() >= deadline
            conn._fail(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {self.address}: "
                       f"{exc or f'no connection within {limit:g} s'}")
            if late and isinstance(exc, TimeoutError):
                raise H2WatchError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise conn.error from None  # type: ignore[misc]
        except asyncio.CancelledError:
            conn._fail(grpc.StatusCode.UNAVAILABLE, f"connecting to {self.address} was cancelled")
            raise
        await _until(ready, loop, deadline)
        return conn

    async def _slot(self, conn: H2Mux, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        """Wait until the node's stream limit lets one more call in (or the connection ends: its error; or it goes
        away: return, the caller sees it unusable)."""
        while not conn.has_slot():
            if conn.error is not None:
                raise conn.error
            if not conn.usable():  # going away: no slot will come for a new stream here
                return
            w: asyncio.Future[None] = loop.create_future()
            if conn.slots is None:
                conn.slots = deque()
            conn.slots.append(w)
            try:
                await _until(w, loop, deadline)
            except BaseException:  # its deadline, its cancellation: the slot it may hold goes to the next waiter
                if w.done():
                    conn._release_slots()
                else:
                    w.cancel()  # skipped by _release_slots (before: a freed slot woke this gone waiter only)
                raise


def _connect_expired(conn: H2Mux) -> None:
    if not conn.ready.done():
        conn._fail(grpc.StatusCode.UNAVAILABLE, f"{conn.address}: the connection was not ready (TLS and HTTP/2 "
                   f"SETTINGS) within {conn.opts.connect_timeout:g} s")


async def _until(fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
    """Wait for a shared future (its exception raised) until `deadline`: DEADLINE_EXCEEDED then."""
    if fut.done():
        fut.result()
        return
    w: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not w.done():
            w.set_result(None)

    fut.add_done_callback(wake)
    timer = loop.call_at(deadline, wake) if deadline is not None else None
    try:
        await w
    finally:
        fut.remove_done_callback(wake)
        if timer is not None:
            timer.cancel()
    if not fut.done():
        raise H2WatchError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    fut.result()


class H2Method:
    """A unary method on an H2Channel, called like grpc.aio's: await m(request, timeout=, metadata=)."""

    __slots__ = ("channel", "deserialize", "method", "serialize")

    def __init__(self, channel: H2Channel, method: str, serialize: Callable[[Any], bytes],
                 deserialize: Callable[[bytes], Any]) -> None:
        self.channel, self.method, self.serialize, self.deserialize = channel, method, serialize, deserialize

    def __call__(self, request: Any, timeout: float | None = None,
                 metadata: Sequence[tuple[str, str]] | None = None) -> Any:
        return self.channel.call(self.method, self.serialize(request), timeout, metadata, self.deserialize)


__all__ = ["H2Channel", "H2Method", "Stream"]
