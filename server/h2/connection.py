"""The connection half of the lean HTTP/2 gRPC client (server/h2/): one asyncio.Protocol object per TCP
connection that connects (TCP, TLS over memory BIOs, the peer's SETTINGS) within a deadline, parses HTTP/2 frames
as they arrive (at most one partial frame, 16 KiB, kept unparsed), answers SETTINGS and PING, keeps the connection
alive (a PING after options.keepalive s of silence, failing when unanswered within options.keepalive_timeout),
turns GOAWAY, RST_STREAM and protocol errors into the call's error, and drops a peer that stops reading (64 KiB
waiting). What a stream does with its DATA and HEADERS is the subclass's (server/h2/watch.py H2Watch): `_data_frame`,
`_header_fragment`, `_fail`.

Why hand-written, and the wire libraries used: see server/h2/watch.py.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from typing import Any

import grpc
import hpack
from hyperframe import frame as hf
from hyperframe.exceptions import HyperframeError

from nodecompat.server.h2.call import (
    MAX_FRAME,
    MAX_HEADER_LIST,
    RST_TO_GRPC,
    H2Options,
    H2WatchError,
    authority_of,
    request_frames,
    start_span,
)
from nodecompat.server.h2.tls import TlsBio

WRITE_LIMIT = 64 * 1024  # bytes of ours the peer has not read before the connection is dropped
WRITE_BATCH = 16  # answers (ACKs, WINDOW_UPDATEs) of one read written together at most
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, FRAME_SIZE_ERROR = 0x1, 0x3, 0x8, 0x6
_SETTINGS_ACK = hf.SettingsFrame(0, flags=["ACK"]).serialize()
_PING_ACK_HEAD = hf.PingFrame(0, bytes(8), flags=["ACK"]).serialize()[:9]
_FAST = frozenset((0x0, 0x4, 0x6, 0x8))  # DATA, SETTINGS, PING, WINDOW_UPDATE: H2Connection._fast
# One decoder for every connection: with a 0-byte table an entry "with incremental indexing" is evicted at once and
# a table-size update above 0 raises (InvalidTableSizeError), so no state outlives a decode (one event-loop thread).
_DECODER = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
_DECODER.header_table_size = 0
_DECODER.max_allowed_table_size = 0
NEW, CONNECTING, OPEN, DONE = range(4)


class H2Connection(TlsBio, asyncio.Protocol):
    """The connection's state and frames (one stream, id 1); H2Watch adds what the stream does with them."""

    __slots__ = ("address", "credit", "deadline", "deserialize", "error", "got_headers", "hblock", "heard", "hend",
                 "mbuf", "need", "opts", "pending", "pinged", "queue", "queued", "rbuf", "request", "settings_seen",
                 "span", "state", "timer", "tls", "transport", "unacked", "waiter", "wbuf")

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
        self.wbuf: list[bytes] | None = None  # while data_received runs: what it answers, written once at its end

    # -- waiting and connecting -------------------------------------------------------------------------------------
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
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for turns a cancellation that lands as the connect
            # fails (a refused port answers at once) into that failure (CPython gh-86296), and the cancelled
            # subscription went on to its backoff sleep (InventorySync.stop then waited its whole bound)
            async with asyncio.timeout(self.opts.connect_timeout):
                await loop.create_connection(lambda: self, host, int(port))
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

    # -- the connection's side (asyncio.Protocol) -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.opts.ssl is None:
            out, self.pending = self.pending, b""
            self._write(out)
            return
        # the preface and the request are written once the handshake is done
        self._start_tls(self.opts.ssl, authority_of(self.opts.authority or self.address))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state != DONE:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.address} was closed"
                       + (f": {exc}" if exc else " by the node"))

    def data_received(self, data: bytes) -> None:
        # what the frames of one read answer (a SETTINGS ACK, a PING ACK, a WINDOW_UPDATE) goes in one write
        self.wbuf = []
        try:
            self._received(data)
        finally:
            self._flush_writes()

    def _flush_writes(self) -> None:
        out, self.wbuf = self.wbuf, None
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _received(self, data: bytes) -> None:
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
                if self.hblock is None and buf[pos + 3] in _FAST and self._fast(buf, pos, length):
                    pos += 9 + length
                    continue
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

    def _fast(self, buf: bytearray, pos: int, length: int) -> bool:
        """The frames every stream gets (DATA without padding, SETTINGS, PING, connection WINDOW_UPDATE) handled from
        the bytes, as _frame handles them once hyperframe has parsed them; False (nothing done): one hyperframe parses
        (an invalid one: its error), a DATA frame with padding, a frame on the wrong stream."""
        kind, flags = buf[pos + 3], buf[pos + 4]
        stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        if kind == 0x0:
            if flags & 0x8 or not stream:  # PADDED; DATA on stream 0 is hyperframe's error
                return False
            self._data_frame(stream, bool(flags & 0x1), bytes(buf[pos + 9:pos + 9 + length]), length)
            return True
        if stream:  # SETTINGS, PING and WINDOW_UPDATE on stream 0 only here
            return False
        if kind == 0x4:
            if length % 6 or (flags & 0x1 and length):
                return False
            if not flags & 0x1:
                self._write(_SETTINGS_ACK)
                self.settings_seen = True
                self._wake()
            return True
        if kind == 0x6:
            if length != 8:
                return False
            if flags & 0x1:
                self.pinged = 0.0
            else:
                self._write(_PING_ACK_HEAD + bytes(buf[pos + 9:pos + 17]))
            return True
        # WINDOW_UPDATE: nothing to do (we send one request, once) once it is valid (1 to 2^31-1, hyperframe's check)
        return length == 4 and 1 <= int.from_bytes(buf[pos + 9:pos + 13], "big") <= 0x7FFFFFFF

    def _frame(self, f: hf.Frame) -> None:
        if self.hblock is not None and not isinstance(f, hf.ContinuationFrame):
            self._protocol_error("a header block interrupted", PROTOCOL_ERROR)
        elif isinstance(f, hf.DataFrame):
            self._data_frame(f.stream_id, "END_STREAM" in f.flags, f.data, f.flow_controlled_length)
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

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.wbuf is not None:
            self.wbuf.append(data)
            if len(self.wbuf) < WRITE_BATCH:
                return
            data = b"".join(self.wbuf)  # a flood of frames to answer: written (and the write bound checked) in batches
            self.wbuf.clear()
        if self._send(data) and self.transport is not None and self.transport.get_write_buffer_size() > WRITE_LIMIT:
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

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the stream's (H2Watch) -------------------------------------------------------------------------------------
    def _data_frame(self, stream: int, end_stream: bool, data: bytes, size: int) -> None:
        """A DATA frame: its stream, END_STREAM, its data without padding, its flow-controlled size in bytes."""
        raise NotImplementedError

    def _header_fragment(self, f: hf.HeadersFrame | hf.ContinuationFrame) -> None:
        raise NotImplementedError

    def _fail(self, code: grpc.StatusCode, details: str, h2_code: int | None = None, goaway: bool = False) -> None:
        raise NotImplementedError
