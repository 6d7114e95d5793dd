"""A lean WatchFeatures client: one server-streaming gRPC call per HTTP/2 connection, without gRPC core.

The connection (frames, SETTINGS, PING, GOAWAY, keepalive) is server/h2/connection.py, TLS server/h2/tls.py, what
it shares with the gRPC path (errors, status mappings, spans, the request) server/h2/call.py; this module is the
stream: DATA reassembled into messages under flow control, headers and trailers, the call's end.

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

import urllib.parse
from typing import Any

import grpc
from hyperframe import frame as hf

from nodecompat.server.h2.call import (
    HTTP_TO_GRPC,
    MAX_HEADER_LIST,
    H2WatchError,
    close_transport,
    end_span,
    status_code,
)
from nodecompat.server.h2.connection import (
    _DECODER,
    CANCEL,
    DONE,
    FLOW_CONTROL_ERROR,
    NEW,
    PROTOCOL_ERROR,
    H2Connection,
)

# Decoded header blocks by their bytes: the shared decoder keeps no state (a 0-byte table), so a block always decodes
# to the same headers, and every node of a fleet answers with the same response header block (a 10,000-stream
# resubscribe decoded it 10,000 times). Read only (_header_fragment, _trailers); at most DECODED_MAX blocks of at
# most DECODED_BLOCK bytes, the first ones seen, kept for the process's life (a node sending others costs decoding).
_DECODED: dict[bytes, dict[bytes, bytes]] = {}
DECODED_MAX, DECODED_BLOCK = 64, 512


class H2Watch(H2Connection):
    """One WatchFeatures call on its own connection. read() and close() on the loop that made it."""

    __slots__ = ()

    # -- the caller's side ------------------------------------------------------------------------------------------
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

    # -- the stream's frames ----------------------------------------------------------------------------------------
    def _data_frame(self, stream: int, end_stream: bool, data: bytes, size: int) -> None:
        if stream != 1 or not self.got_headers:
            self._protocol_error(f"DATA on stream {stream} before its headers", PROTOCOL_ERROR)
            return
        self.credit -= size
        if self.credit < 0:
            self._fail(grpc.StatusCode.RESOURCE_EXHAUSTED, "the node sent past its flow-control window",
                       FLOW_CONTROL_ERROR)
            return
        self.unacked += size
        self._reassemble(data)
        if self.error is None and end_stream:
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
        headers = _DECODED.get(block)
        if headers is None:
            headers = dict(_DECODER.decode(block, raw=True))
            if len(block) <= DECODED_BLOCK and len(_DECODED) < DECODED_MAX:
                _DECODED[block] = headers
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

    # -- the call's end ---------------------------------------------------------------------------------------------
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
        self._flush_writes()  # what data_received answered before this end (then the RST_STREAM or GOAWAY)
        for handle in (self.timer, self.deadline):
            if handle is not None:
                handle.cancel()
        self.timer = self.deadline = None
        self.rbuf = bytearray()
        self.mbuf = bytearray()
        self.tls = None
        if self.transport is not None:
            close_transport(self.transport)  # flushes what is written (an RST_STREAM, a GOAWAY), then closes
            self.transport = None
