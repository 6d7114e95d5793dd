"""One HTTP/2 connection carrying many unary gRPC calls at once (streams 1, 3, 5, ...), without gRPC core.

The connection half of server/h2/unary.py (which keeps one per node address and makes the calls); the stream
half (DATA, headers, trailers) is server/h2/streams.py. Why hand-written: see server/h2/watch.py (a connected gRPC
core channel costs ~30 KiB whatever its arguments; a kept H2Channel with this object, its asyncio transport and
socket ~4 KiB, server/limits.py H2_CONNECTION_BYTES). Wire formats by the python-hyper libraries: `hyperframe`
parses and serializes frames, `hpack` encodes and decodes header blocks (we advertise a header table of 0 bytes
and send a table-size update of 0 first, so neither side's table ever holds an entry: the coders are shared per
thread). TLS, when asked, is server/h2/tls.py (memory BIOs).

What the peer cannot do to us: make a call wait past its own deadline (every wait is bounded by the caller's,
unary.py); make us buffer a message over options.max_message (refused from its 5-byte prefix); send past the
windows we granted (FLOW_CONTROL_ERROR); hold a header block open past MAX_HEADER_LIST bytes. What we do not do to
the peer: send past its flow-control windows (a request's DATA waits for WINDOW_UPDATE), open more streams than
its SETTINGS_MAX_CONCURRENT_STREAMS (callers wait for a slot within their deadline).
"""

from __future__ import annotations

import asyncio
import collections
import ssl

import grpc
import hpack
from hyperframe import frame as hf
from hyperframe.exceptions import HyperframeError

from nodecompat.server.h2.call import (
    MAX_FRAME,
    MAX_HEADER_LIST,
    PREFACE,
    RST_TO_GRPC,
    H2Options,
    H2WatchError,
    authority_of,
    close_transport,
)
from nodecompat.server.h2.streams import CANCEL, FRAME_SIZE_ERROR, PROTOCOL_ERROR, Stream, StreamFrames
from nodecompat.server.h2.tls import TlsBio

DEFAULT_WINDOW = 65535
LAST_STREAM_ID = 2**31 - 1
_SETTINGS_ACK = hf.SettingsFrame(0, flags=["ACK"]).serialize()


class H2Mux(StreamFrames, TlsBio, asyncio.Protocol):
    """One connection (asyncio.Protocol) and its open streams; used by server/h2/unary.py on one event loop."""

    __slots__ = ("address", "conn_send", "error", "goaway", "next_id", "opts", "peer_max", "peer_window", "pending",
                 "rbuf", "ready", "sent_block", "slots", "streams", "tls", "transport")

    def __init__(self, address: str, options: H2Options, ready: asyncio.Future[None]) -> None:
        self.address, self.opts, self.ready = address, options, ready
        self.transport: asyncio.Transport | None = None
        self.tls: tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO] | None = None
        self.pending = b""
        self.error: H2WatchError | None = None  # the connection's end: no new stream
        self.goaway = False
        self.rbuf = bytearray()
        self.hblock: bytearray | None = None
        self.hstream = 0
        self.hend = False
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.conn_send = DEFAULT_WINDOW  # what the peer lets us send on the connection
        self.peer_window = DEFAULT_WINDOW  # its SETTINGS_INITIAL_WINDOW_SIZE: each new stream's send window
        self.peer_max = 100  # its SETTINGS_MAX_CONCURRENT_STREAMS (until it says; gRPC core says nothing: no limit)
        self.conn_unacked = 0
        self.sent_block = False  # the first header block carries the table-size update
        self.slots: collections.deque[asyncio.Future[None]] | None = None  # callers waiting for a stream slot

    def usable(self) -> bool:
        """Whether a new call may use this connection (not failed, not going away, stream ids left)."""
        return self.error is None and not self.goaway and self.next_id < LAST_STREAM_ID

    def idle(self) -> bool:
        return not self.streams

    # -- the connection's side (asyncio.Protocol) ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = hf.SettingsFrame(0, settings={
            hf.SettingsFrame.HEADER_TABLE_SIZE: 0, hf.SettingsFrame.ENABLE_PUSH: 0,
            hf.SettingsFrame.INITIAL_WINDOW_SIZE: self.opts.window,
            hf.SettingsFrame.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST}).serialize()
        first = PREFACE + settings
        if self.opts.window > DEFAULT_WINDOW:
            first += hf.WindowUpdateFrame(0, window_increment=self.opts.window - DEFAULT_WINDOW).serialize()
        if self.opts.ssl is None:
            self._write(first)
            return
        self.pending = first  # written once the handshake is done (server/h2/tls.py)
        self._start_tls(self.opts.ssl, authority_of(self.opts.authority or self.address))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.address} was closed"
                   + (f": {exc}" if exc else " by the node"))

    def data_received(self, data: bytes) -> None:
        if self.tls is not None:
            data = self._unwrap(data)
            if not data:
                return
        buf = self.rbuf
        buf += data
        pos, n = 0, len(buf)
        try:
            while n - pos >= 9 and self.error is None:
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
        except (HyperframeError, hpack.HPACKError, ValueError) as exc:
            self._protocol_error(f"{type(exc).__name__}: {exc}", PROTOCOL_ERROR)
            return
        if self.error is None:
            self.rbuf = buf[pos:] if pos < n else bytearray()

    def _frame(self, f: hf.Frame) -> None:
        if self.hblock is not None and not isinstance(f, hf.ContinuationFrame):
            self._protocol_error("a header block interrupted", PROTOCOL_ERROR)
        elif isinstance(f, hf.DataFrame):
            self._data(f)
        elif isinstance(f, hf.HeadersFrame | hf.ContinuationFrame):
            self._header_fragment(f)
        elif isinstance(f, hf.WindowUpdateFrame):
            self._window_update(f.stream_id, f.window_increment)
        elif isinstance(f, hf.SettingsFrame):
            if "ACK" not in f.flags:
                self._settings(f.settings)
        elif isinstance(f, hf.PingFrame):
            if "ACK" not in f.flags:
                self._ping_ack(f.opaque_data)
        elif isinstance(f, hf.RstStreamFrame):
            self.end_stream(f.stream_id, RST_TO_GRPC.get(f.error_code, grpc.StatusCode.INTERNAL),
                            f"the node reset the stream (RST_STREAM error {f.error_code})")
        elif isinstance(f, hf.GoAwayFrame):
            self._go_away(f)
        elif isinstance(f, hf.PushPromiseFrame):
            self._protocol_error("PUSH_PROMISE after SETTINGS_ENABLE_PUSH 0", PROTOCOL_ERROR)
        # PRIORITY, ALTSVC and extension frames: nothing to do

    def _settings(self, settings: dict[int, int]) -> None:
        window = settings.get(hf.SettingsFrame.INITIAL_WINDOW_SIZE)
        if window is not None:
            delta, self.peer_window = window - self.peer_window, window
            for s in self.streams.values():
                s.send_window += delta
        self.peer_max = settings.get(hf.SettingsFrame.MAX_CONCURRENT_STREAMS, self.peer_max)
        if not self._unread_ok():  # a SETTINGS flood from a node that never reads: as a PING flood
            return
        self._write(_SETTINGS_ACK)
        if not self.ready.done() and self.tls_ready():
            self.ready.set_result(None)
        self._flush_all()
        self._release_slots()

    def _ping_ack(self, data: bytes) -> None:
        """Answer a PING, unless the node does not read what we send: what waits in our buffer is requests it
        let us send (<= options.max_message each) and answers like this one; past max_message + 64 KiB, the
        connection ends (a node sending PINGs and never reading would otherwise grow it without end)."""
        if not self._unread_ok():
            return
        self._write(hf.PingFrame(0, data, flags=["ACK"]).serialize())

    def _unread_ok(self) -> bool:
        """False (and the connection ended UNAVAILABLE) when our unread writes passed max_message + 64 KiB: the
        node does not read what we send (its PINGs and SETTINGS each ask for an answer)."""
        if self.transport is not None and self.transport.get_write_buffer_size() > self.opts.max_message + 65536:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"{self.address} does not read what it is sent")
            return False
        return True

    def tls_ready(self) -> bool:
        return self.tls is None or self.pending == b""

    def _window_update(self, sid: int, inc: int) -> None:
        if sid == 0:
            self.conn_send += inc
            self._flush_all()
            return
        s = self.streams.get(sid)
        if s is not None:
            s.send_window += inc
            self._flush(s)

    def _go_away(self, f: hf.GoAwayFrame) -> None:
        """No new stream here; streams the node did not process (id > last_stream_id) fail UNAVAILABLE (gRPC
        core retries those itself; the fan-out's one retry on UNAVAILABLE does here). The rest may end."""
        self.goaway = True
        why = f"GOAWAY error {f.error_code}"
        if f.additional_data:
            why += ": " + f.additional_data.decode(errors="replace")[:200]
        for sid in [i for i in self.streams if i > f.last_stream_id]:
            self.end_stream(sid, grpc.StatusCode.UNAVAILABLE, f"{self.address} is going away ({why})")
        self._release_slots()  # callers waiting for a slot here take a new connection (unary.py), not this one's end
        if not self.streams:
            self.close()

    # -- streams -------------------------------------------------------------------------------------------------
    def open_stream(self, fut: asyncio.Future[bytes], block: bytes, body: bytes) -> Stream:
        """Start a call: HEADERS (`block`, without the table-size update the first one needs) and the
        length-prefixed request `body` as far as the windows allow. The caller checked usable() and a slot."""
        s = Stream(self.next_id, fut, self.peer_window)
        self.next_id += 2
        self.streams[s.id] = s
        if not self.sent_block:
            self.sent_block, block = True, b"\x20" + block  # dynamic table size update: 0
        s.out = memoryview(body)  # sliced without copying as the windows let it go
        self._flush(s, hf.HeadersFrame(s.id, block, flags=["END_HEADERS"]).serialize())  # one write, one send
        return s

    def has_slot(self) -> bool:
        return len(self.streams) < self.peer_max

    def _flush(self, s: Stream, first: bytes = b"") -> None:
        """Write `first` and as much of the request as the windows allow, in one transport write."""
        frames = [first]
        while s.out and self.error is None:
            n = min(len(s.out), MAX_FRAME, self.conn_send, s.send_window)
            if n <= 0:
                break
            chunk, s.out = s.out[:n], s.out[n:]
            self.conn_send -= n
            s.send_window -= n
            frames.append(hf.DataFrame(s.id, bytes(chunk), flags=[] if s.out else ["END_STREAM"]).serialize())
        if len(frames) > 1 or first:
            self._write(b"".join(frames))

    def _flush_all(self) -> None:
        for s in list(self.streams.values()):
            if s.out:
                self._flush(s)

    def _release_slots(self) -> None:
        while self.slots and (self.has_slot() or self.error is not None or self.goaway):
            w = self.slots.popleft()
            if not w.done():
                w.set_result(None)
                if self.error is None and not self.goaway:
                    return  # one slot freed, one waiter woken (it takes the slot before yielding)

    def end_stream(self, sid: int, code: grpc.StatusCode | None, details: str = "", rst: int | None = None) -> None:
        """The stream's end: OK (code None: its message is the result) or an error; RST_STREAM `rst` first."""
        s = self.streams.pop(sid, None)
        if s is None:
            return
        if rst is not None:
            self._write(hf.RstStreamFrame(sid, error_code=rst).serialize())
        if s.timer is not None:
            s.timer.cancel()
        if not s.fut.done():
            if code is None:
                s.fut.set_result(s.msg)  # type: ignore[arg-type]
            else:
                s.fut.set_exception(H2WatchError(code, details))
        self._release_slots()
        if self.goaway and not self.streams:
            self.close()

    # -- helpers ------------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        self._send(data)  # its bound: _unread_ok, checked by the answers a node can make us send

    def _protocol_error(self, what: str, h2_code: int) -> None:
        self._write(hf.GoAwayFrame(0, last_stream_id=0, error_code=h2_code).serialize())
        self._fail(grpc.StatusCode.INTERNAL, f"HTTP/2 protocol error from {self.address}: {what}")

    def _fail(self, code: grpc.StatusCode, details: str, h2_code: int | None = None, goaway: bool = False) -> None:
        """The connection's end: every open stream ends with this error, the connection is closed."""
        if self.error is not None:
            return
        self.error = H2WatchError(code, details)
        if not self.ready.done():
            self.ready.set_exception(self.error)
            self.ready.exception()  # retrieved: a connect nobody awaits any more logs nothing
        for sid in list(self.streams):
            self.end_stream(sid, code, details)
        self._release_slots()
        self.close()

    def _wake(self) -> None:  # the TLS handshake ended (server/h2/tls.py): ready once the SETTINGS came too
        pass

    def close(self) -> None:
        """Close the connection now (open streams end UNAVAILABLE); idempotent."""
        if self.error is None:
            self._fail(grpc.StatusCode.UNAVAILABLE, f"the connection to {self.address} was closed")
            return
        self.rbuf = bytearray()
        self.tls = None
        if self.transport is not None:
            close_transport(self.transport)  # flushes what is written (a GOAWAY, an RST_STREAM), then closes
            self.transport = None

    def abort_stream(self, s: Stream, code: grpc.StatusCode, details: str) -> None:
        """End a call from our side (its deadline, its caller cancelled): RST_STREAM CANCEL."""
        self.end_stream(s.id, code, details, CANCEL)
