"""A lean WatchFeatures client: one server-streaming gRPC call per HTTP/2 connection, without gRPC core.

Why hand-written: the aggregator holds one WatchFeatures stream per nodes-file/DNS node, and a connected gRPC core
channel costs ~30 KiB whatever its channel arguments (bench/channel_args.py, bench/streams_breakdown.py), ~52 KB of
RSS a streamed node in all. The `h2` library's per-connection state was measured at 10+ KiB (its Settings objects
alone ~10 KiB: 30 deques; h2.connection 2.5 KiB, its hpack tables 1.7 KiB). This module keeps exactly what one
stream needs in one `__slots__` object and uses the maintained python-hyper libraries for the wire formats:
`hyperframe` parses and serializes HTTP/2 frames, `hpack` encodes the request's headers (an encoder made for the
call, then dropped) and decodes the answer's (one decoder shared by every connection: we advertise a header table
of 0 bytes, refuse a peer's larger table-size update, so the shared table never holds an entry). TLS, when asked,
is an ssl.SSLObject over memory BIOs in the same object (asyncio's own TLS transport allocates a 256 KiB buffer
per connection).

Usage (an InventorySync event loop):

    call = H2Watch(address, request_bytes, options, Response.FromString)
    msg = await call.read()       # a message, or grpc.aio.EOF once the node ended the call with grpc-status 0
    await call.close()            # always: closes the connection and ends the trace span

Errors are H2WatchError, a grpc.aio.AioRpcError carrying the grpc.StatusCode gRPC core would give: UNAVAILABLE
(connect/TLS failure, the connection closing or going away, an unanswered keepalive PING), RESOURCE_EXHAUSTED (a
message over options.max_message bytes: refused before it is reassembled; a peer ignoring flow control), the
trailers' grpc-status and grpc-message, RST_STREAM's code as the gRPC spec maps it, INTERNAL for protocol errors.
Waits: connecting (TCP, TLS, the peer's SETTINGS) within options.connect_timeout; afterwards a connection silent for
options.keepalive seconds is PINGed and fails when the PING is not answered within options.keepalive_timeout (the
channel arguments of the gRPC path: 20 s / 10 s); a peer that stops reading what we send fails once 64 KiB wait.
Memory: at most one partial frame (16 KiB) unparsed, a message being reassembled (<= options.max_message), and
received messages queued unread bounded by withholding WINDOW_UPDATEs once options.window bytes are queued.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Any

import grpc
import hpack
from hyperframe import frame as hf
from hyperframe.exceptions import HyperframeError

from nodecompat.server.inventory.watch_h2_call import (
    HTTP_TO_GRPC,
    MAX_FRAME,
    MAX_HEADER_LIST,
    RST_TO_GRPC,
    H2Options,
    H2WatchError,
    authority_of,
    end_span,
    request_frames,
    start_span,
    status_code,
)
from nodecompat.server.inventory.watch_h2_tls import TlsBio

WRITE_LIMIT = 64 * 1024  # bytes of ours the peer has not read before the connection is dropped
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, FRAME_SIZE_ERROR = 0x1, 0x3, 0x8, 0x6
_SETTINGS_ACK = hf.SettingsFrame(0, flags=["ACK"]).serialize()
# One decoder for every connection: with a 0-byte table an entry "with incremental indexing" is evicted at once and
# a table-size update above 0 raises (InvalidTableSizeError), so no state outlives a decode (one event-loop thread).
_DECODER = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
_DECODER.header_table_size = 0
_DECODER.max_allowed_table_size = 0
NEW, CONNECTING, OPEN, DONE = range(4)


class H2Watch(TlsBio, asyncio.Protocol):
    """One WatchFeatures call on its own connection. read() and close() on the loop that made it."""

    __slots__ = ("address", "credit", "deadline", "deserialize", "error", "got_headers", "hblock", "heard", "hend",
                 "mbuf", "need", "opts", "pending", "pinged", "queue", "queued", "rbuf", "request", "settings_seen",
                 "span", "state", "timer", "tls", "transport", "unacked", "waiter")

    def __init__(self, address: str, request: bytes, options: H2Options,
                 deserialize: Callable[[bytes], Any] = bytes) -> None:
        self.address, self.request, self.opts, self.deserialize = address, request, options, deserialize
        self.state = NEW
        self.transport: asyncio.Transport | None = None
        self.tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None
        self.rbuf = bytearray()
        self.mbuf = bytearray()
        self.need = -1  # bytes of the message being reassembled; -1: its 5-byte prefix is next
        self.hblock: bytearray | None = None  # a header block awaiting its CONTINUATIONs
        self.hend = False
        self.got_headers = self.settings_seen = False
        self.pending = b""
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = self.unacked = 0
        self.credit = options.window
        self.error: H2WatchError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # connect deadline, then keepalive
        self.deadline: asyncio.TimerHandle | None = None  # the call's (options.timeout)
        self.heard = self.pinged = 0.0
        self.span: Any = None

    # -- the caller's side --------------------------------------------------------------------------------------
    async def read(self) -> Any:
        """The next message, deserialized; grpc.aio.EOF after the trailers said OK. Raises H2WatchError."""
        if self.state == NEW:
            await self._connect()
        while True:
            if self.queue:
                data = self.queue.popleft()
                self.queued -= 5 + len(data)
                self._update_window()
                try:
                    return self.deserialize(data)
                except Exception as exc:
                    self._fail(grpc.StatusCode.INTERNAL, f"the node's message cannot be parsed: {exc}")
                    raise self.error from None  # type: ignore[misc]
            if self.error is not None:
                raise self.error
            if self.state == DONE:
                return grpc.aio.EOF
            await self._wait()

    async def close(self, grace: float | None = None) -> None:
        """Close the connection (RST_STREAM CANCEL first when the call is open) and end the span; idempotent."""
        if self.state != DONE:
            self._write(hf.RstStreamFrame(1, error_code=CANCEL).serialize())
            self._finish(None)
        self._teardown()

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def _connect(self) -> None:
        self.state = CONNECTING
        loop = asyncio.get_running_loop()
        self.span = start_span(self.opts.trace)
        host, _, port = self.address.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        authority = self.opts.authority or self.address
        deadline = loop.time() + self.opts.connect_timeout
        # written by connection_made (the node's SETTINGS may come at once)
        self.pending, self.request = request_frames(authority, self.request, self.opts, self.span), b""
        if self.opts.timeout is not None:
            self.deadline = loop.call_later(self.opts.timeout, self._fail, grpc.StatusCode.DEADLINE_EXCEEDED,
                                            "Deadline Exceeded")
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, host, int(port)), self.opts.connect_timeout)
        except (TimeoutError, OSError, ValueError) as exc:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {self.address}: "
                       f"{exc or f'no connection within {self.opts.connect_timeout:g} s'}")
            raise self.error from None  # type: ignore[misc]
        self.timer = loop.call_at(deadline, self._connect_expired)
        while self.error is None and self.state != DONE and not (self.settings_seen and self.tls_ready()):
            await self._wait()
        if self.error is not None:
            raise self.error
        if self.state == DONE:  # the whole call came with the node's SETTINGS
            return
        self.state = OPEN
        self.timer.cancel()
        self.heard = loop.time()
        self.timer = loop.call_later(self.opts.keepalive, self._keepalive)

    def tls_ready(self) -> bool:
        return self.tls is None or self.pending == b""

    def _connect_expired(self) -> None:
        self._fail(grpc.StatusCode.UNAVAILABLE, f"{self.address}: the connection was not ready (TLS and HTTP/2 "
                   f"SETTINGS) within {self.opts.connect_timeout:g} s")

    # -- the connection's side (asyncio.Protocol) ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.opts.ssl is None:
            out, self.pending = self.pending, b""
            self._write(out)
            return
        inc, out_bio = ssl.MemoryBIO(), ssl.MemoryBIO()
        sslobj = self.opts.ssl.wrap_bio(inc, out_bio, server_hostname=authority_of(self.opts.authority or self.address))
        self.tls = (sslobj, inc, out_bio)
        self._handshake()  # the preface and the request are written once it is done

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state != DONE:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.address} was closed"
                       + (f": {exc}" if exc else " by the node"))

    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time() if self.state == OPEN else self.heard
        if self.tls is not None:
            data = self._unwrap(data)
            if not data:
                return
        buf = self.rbuf
        buf += data
        pos, n = 0, len(buf)
        try:
            while n - pos >= 9 and self.state != DONE:
                length = int.from_bytes(buf[pos:pos + 3], "big")
                if length > MAX_FRAME:
                    self._protocol_error(f"a frame of {length} bytes (at most {MAX_FRAME})", FRAME_SIZE_ERROR)
                    return
                if n - pos < 9 + length:
                    break
                f, _ = hf.Frame.parse_frame_header(memoryview(bytes(buf[pos:pos + 9])))
                f.parse_body(memoryview(bytes(buf[pos + 9:pos + 9 + length])))
                pos += 9 + length
                self._frame(f)
            if self.state == DONE:
                return
        except (HyperframeError, hpack.HPACKError, ValueError) as exc:
            self._protocol_error(f"{type(exc).__name__}: {exc}", PROTOCOL_ERROR)
            return
        self.rbuf = buf[pos:] if pos < n else bytearray()

    def _frame(self, f: hf.Frame) -> None:
        if self.hblock is not None and not isinstance(f, hf.ContinuationFrame):
            self._protocol_error("a header block interrupted", PROTOCOL_ERROR)
        elif isinstance(f, hf.DataFrame):
            self._data(f)
        elif isinstance(f, hf.HeadersFrame | hf.ContinuationFrame):
            self._header_fragment(f)
        elif isinstance(f, hf.SettingsFrame):
            if "ACK" not in f.flags:
                self._write(_SETTINGS_ACK)
                self.settings_seen = True
                self._wake()
        elif isinstance(f, hf.PingFrame):
            if "ACK" in f.flags:
                self.pinged = 0.0
            else:
                self._write(hf.PingFrame(0, f.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(f, hf.GoAwayFrame):
            if f.last_stream_id < 1:  # our stream was not processed (a graceful GOAWAY names it and lets it end)
                self._fail(grpc.StatusCode.UNAVAILABLE, f"{self.address} is going away (GOAWAY error {f.error_code}"
                           f"{': ' + f.additional_data.decode(errors='replace')[:200] if f.additional_data else ''})")
        elif isinstance(f, hf.RstStreamFrame):
            if f.stream_id == 1:
                self._fail(RST_TO_GRPC.get(f.error_code, grpc.StatusCode.INTERNAL),
                           f"the node reset the stream (RST_STREAM error {f.error_code})")
        elif isinstance(f, hf.PushPromiseFrame):
            self._protocol_error("PUSH_PROMISE after SETTINGS_ENABLE_PUSH 0", PROTOCOL_ERROR)
        # WINDOW_UPDATE, PRIORITY, ALTSVC and extension frames: nothing to do (we send one request, once)

    def _data(self, f: hf.DataFrame) -> None:
        if f.stream_id != 1 or not self.got_headers:
            self._protocol_error(f"DATA on stream {f.stream_id} before its headers", PROTOCOL_ERROR)
            return
        size = f.flow_controlled_length
        self.credit -= size
        if self.credit < 0:
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "the node sent past its flow-control window",
                       FLOW_CONTROL_ERROR)
            return
        self.unacked += size
        self._reassemble(f.data)
        if self.error is None and "END_STREAM" in f.flags:
            self._fail(grpc.StatusCode.INTERNAL, "the node ended the stream without trailers")
            return
        self._update_window()

    def _reassemble(self, data: bytes) -> None:
        mbuf = self.mbuf
        mbuf += data
        while True:
            if self.need < 0:
                if len(mbuf) < 5:
                    break
                if mbuf[0] & 1:
                    self._fail(grpc.StatusCode.INTERNAL, "a compressed message (none was asked for)", CANCEL)
                    return
                self.need = int.from_bytes(mbuf[1:5], "big")
                if self.need > self.opts.max_message:
                    self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({self.need}"
                               f" vs. {self.opts.max_message})", CANCEL)
                    return
                del mbuf[:5]
            if len(mbuf) < self.need:
                break
            msg = bytes(mbuf[:self.need])
            del mbuf[:self.need]
            self.need = -1
            self.queue.append(msg)
            self.queued += 5 + len(msg)  # the prefix too: empty messages fill the bound as well
            self._wake()
        if not mbuf:
            self.mbuf = bytearray()  # no capacity kept between messages

    def _update_window(self) -> None:
        """WINDOW_UPDATE (stream and connection) once half the window is used, unless unread messages fill it."""
        if self.unacked >= self.opts.window // 2 and self.queued < self.opts.window and self.state != DONE:
            n, self.unacked = self.unacked, 0
            self.credit += n
            self._write(hf.WindowUpdateFrame(0, window_increment=n).serialize()
                        + hf.WindowUpdateFrame(1, window_increment=n).serialize())

    def _header_fragment(self, f: hf.HeadersFrame | hf.ContinuationFrame) -> None:
        if f.stream_id != 1 or (isinstance(f, hf.ContinuationFrame) and self.hblock is None):
            self._protocol_error(f"{type(f).__name__} on stream {f.stream_id}", PROTOCOL_ERROR)
            return
        if not f.data and "END_HEADERS" not in f.flags and isinstance(f, hf.ContinuationFrame):  # as gRPC core:
            self._protocol_error("an empty CONTINUATION without END_HEADERS", PROTOCOL_ERROR)  # no end, no growth
            return
        if isinstance(f, hf.HeadersFrame):
            self.hblock, self.hend = bytearray(f.data), "END_STREAM" in f.flags
        else:
            self.hblock += f.data  # type: ignore[operator]
        if len(self.hblock) > MAX_HEADER_LIST:
            self._protocol_error(f"a header block over {MAX_HEADER_LIST} bytes", PROTOCOL_ERROR)
            return
        if "END_HEADERS" not in f.flags:
            return
        block, self.hblock = bytes(self.hblock), None
        headers = dict(_DECODER.decode(block, raw=True))
        if not self.got_headers:
            self.got_headers = True
            status = headers.get(b":status", b"")
            if status != b"200":
                code = HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)
                self._fail(code, f"the node answered HTTP status {status.decode(errors='replace')}", CANCEL)
                return
            if b"grpc-status" not in headers and not self.hend:
                if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
                    self._fail(grpc.StatusCode.UNKNOWN, "the node's answer is not gRPC (content-type "
                               f"{headers.get(b'content-type', b'').decode(errors='replace')!r})", CANCEL)
                return
        elif not self.hend:
            self._protocol_error("trailers without END_STREAM", PROTOCOL_ERROR)
            return
        self._trailers(headers)

    def _trailers(self, headers: dict[bytes, bytes]) -> None:
        raw = headers.get(b"grpc-status")
        message = urllib.parse.unquote(headers.get(b"grpc-message", b"").decode(errors="replace"))
        if raw is None:
            self._fail(grpc.StatusCode.UNKNOWN, "the node ended the call without grpc-status")
        elif raw != b"0":
            self._fail(status_code(raw), message)
        elif self.need >= 0 or self.mbuf:
            self._fail(grpc.StatusCode.INTERNAL, "the node ended the call inside a message")
        else:
            self._finish(None)
            self._teardown()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self.tls is not None:
            try:
                self.tls[0].write(data)
            except ssl.SSLError:
                return
            self._flush_tls()
        else:
            self.transport.write(data)
        if self.transport.get_write_buffer_size() > WRITE_LIMIT:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"{self.address} does not read what it is sent "
                       f"({WRITE_LIMIT} bytes waiting)")

    def _keepalive(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.pinged and now - self.pinged >= self.opts.keepalive_timeout:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"keepalive PING to {self.address} not answered within "
                       f"{self.opts.keepalive_timeout:g} s")
            return
        if not self.pinged and now - self.heard >= self.opts.keepalive:
            self.pinged = now
            self._write(hf.PingFrame(0, b"nc-alive").serialize())
        wait = self.opts.keepalive_timeout if self.pinged else self.heard + self.opts.keepalive - now
        if self.state != DONE:
            self.timer = asyncio.get_running_loop().call_later(max(wait, 0.05), self._keepalive)

    def _protocol_error(self, what: str, h2_code: int) -> None:
        self._fail(grpc.StatusCode.INTERNAL, f"HTTP/2 protocol error from {self.address}: {what}", h2_code,
                   goaway=True)

    def _fail(self, code: grpc.StatusCode, details: str, h2_code: int | None = None, goaway: bool = False) -> None:
        """Terminal: the error read() raises (the first one wins); RST_STREAM/GOAWAY with h2_code, then close."""
        if self.state == DONE:
            return
        if h2_code is not None:
            self._write(hf.GoAwayFrame(0, last_stream_id=0, error_code=h2_code).serialize() if goaway
                        else hf.RstStreamFrame(1, error_code=h2_code).serialize())
        self.error = H2WatchError(code, details)
        self._finish(self.error)
        self._teardown()

    def _finish(self, error: H2WatchError | None) -> None:
        self.state = DONE
        self.queued = 0 if error is not None else self.queued
        if error is not None:
            self.queue.clear()
        if self.span is not None:
            end_span(self.span, error)
            self.span = None
        self._wake()

    def _teardown(self) -> None:
        for handle in (self.timer, self.deadline):
            if handle is not None:
                handle.cancel()
        self.timer = self.deadline = None
        self.rbuf = bytearray()
        self.mbuf = bytearray()
        self.tls = None
        if self.transport is not None:
            self.transport.close()  # flushes what is written (an RST_STREAM, a GOAWAY), then closes
            self.transport = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
