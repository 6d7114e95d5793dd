"""The stream half of server/h2/mux.py: one unary call's Stream, and what H2Mux does with a stream's frames
(DATA reassembled into the one message under our flow-control windows and options.max_message, headers, trailers
to a grpc.StatusCode as the gRPC spec maps them: doc/PROTOCOL-HTTP2.md, doc/http-grpc-status-mapping.md).
Header blocks are decoded by one hpack decoder per thread with a 0-byte table (no state between blocks)."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse

import grpc
import hpack
from hyperframe import frame as hf

from nodecompat.server.h2.call import HTTP_TO_GRPC, MAX_HEADER_LIST, H2Options, status_code

PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, FRAME_SIZE_ERROR = 0x1, 0x3, 0x8, 0x6
_coders = threading.local()  # one hpack decoder per thread (each pool runs on one loop): a 0-byte table, no state


def decoder() -> hpack.Decoder:
    """This thread's header decoder: a 0-byte table (a larger table-size update from the peer raises)."""
    dec = getattr(_coders, "dec", None)
    if dec is None:
        dec = _coders.dec = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        dec.header_table_size = 0
        dec.max_allowed_table_size = 0
    return dec


# Decoded header blocks by their bytes: with a 0-byte table a block's decoding depends on nothing else, and a node
# answers every call with the same few blocks (":status 200 ...", "grpc-status 0"): decoded once, not per call.
_DECODED: dict[bytes, dict[bytes, bytes]] = {}
DECODED_MAX, DECODED_BLOCK_MAX = 256, 512  # entries, bytes a block: at most ~130 KiB however hostile the nodes


def decode(block: bytes) -> dict[bytes, bytes]:
    """A header block -> {name: value} (raw bytes; read-only: it may be shared). Raises hpack.HPACKError."""
    got = _DECODED.get(block)
    if got is None:
        got = dict(decoder().decode(block, raw=True))
        if len(block) <= DECODED_BLOCK_MAX:
            if len(_DECODED) >= DECODED_MAX:
                _DECODED.clear()
            _DECODED[block] = got
    return got


class Stream:
    """One call's stream: its future (set to the response bytes, or an H2WatchError) and what is in transit."""

    __slots__ = ("fut", "got_headers", "id", "mbuf", "msg", "need", "out", "send_window", "timer", "unacked")

    def __init__(self, sid: int, fut: asyncio.Future[bytes], send_window: int) -> None:
        self.id, self.fut, self.send_window = sid, fut, send_window
        self.got_headers = False
        self.mbuf = bytearray()
        self.need = -1  # bytes of the message being reassembled; -1: its 5-byte prefix is next
        self.msg: bytes | None = None
        self.out = memoryview(b"")  # request bytes the peer's windows did not let us send yet
        self.unacked = 0
        self.timer: asyncio.TimerHandle | None = None



class StreamFrames:
    """Base of H2Mux: the header block being received and the connection's unacknowledged bytes are slots here,
    the other attributes and methods below are H2Mux's."""

    __slots__ = ("conn_unacked", "hblock", "hend", "hstream")
    conn_unacked: int
    hblock: bytearray | None
    hend: bool
    hstream: int
    opts: H2Options
    streams: dict[int, Stream]

    def end_stream(self, sid: int, code: grpc.StatusCode | None, details: str = "", rst: int | None = None) -> None:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _protocol_error(self, what: str, h2_code: int) -> None:
        raise NotImplementedError

    def _data(self, f: hf.DataFrame) -> None:
        size = f.flow_controlled_length
        self.conn_unacked += size
        if self.conn_unacked > self.opts.window:
            self._protocol_error("the node sent past the connection's flow-control window", FLOW_CONTROL_ERROR)
            return
        if self.conn_unacked >= self.opts.window // 2:
            self._write(hf.WindowUpdateFrame(0, window_increment=self.conn_unacked).serialize())
            self.conn_unacked = 0
        s = self.streams.get(f.stream_id)
        if s is None:  # a stream we ended (its deadline, RST_STREAM): counted for the connection, dropped
            return
        if not s.got_headers:
            self._protocol_error(f"DATA on stream {f.stream_id} before its headers", PROTOCOL_ERROR)
            return
        s.unacked += size
        if s.unacked > self.opts.window:
            self.end_stream(s.id, grpc.StatusCode.RESOURCE_EXHAUSTED, "the node sent past its flow-control window",
                            FLOW_CONTROL_ERROR)
            return
        self._reassemble(s, f.data)
        if s.id not in self.streams:
            return
        if "END_STREAM" in f.flags:
            self.end_stream(s.id, grpc.StatusCode.INTERNAL, "the node ended the stream without trailers")
        elif s.unacked >= self.opts.window // 2:
            self._write(hf.WindowUpdateFrame(s.id, window_increment=s.unacked).serialize())
            s.unacked = 0

    def _reassemble(self, s: Stream, data: bytes) -> None:
        mbuf = s.mbuf
        mbuf += data
        while mbuf:
            if s.need < 0:
                if len(mbuf) < 5:
                    return
                if mbuf[0] & 1:
                    self.end_stream(s.id, grpc.StatusCode.INTERNAL, "a compressed message (none was asked for)",
                                    CANCEL)
                    return
                s.need = int.from_bytes(mbuf[1:5], "big")
                if s.need > self.opts.max_message:
                    self.end_stream(s.id, grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max "
                                    f"({s.need} vs. {self.opts.max_message})", CANCEL)
                    return
                del mbuf[:5]
            if len(mbuf) < s.need:
                return
            if s.msg is not None:
                self.end_stream(s.id, grpc.StatusCode.INTERNAL, "a second message in a unary answer", CANCEL)
                return
            s.msg = bytes(mbuf[:s.need])
            del mbuf[:s.need]
            s.need = -1

    def _header_fragment(self, f: hf.HeadersFrame | hf.ContinuationFrame) -> None:
        if isinstance(f, hf.HeadersFrame):
            self.hblock, self.hstream, self.hend = bytearray(f.data), f.stream_id, "END_STREAM" in f.flags
        elif self.hblock is None or f.stream_id != self.hstream:
            self._protocol_error(f"CONTINUATION on stream {f.stream_id}", PROTOCOL_ERROR)
            return
        elif not f.data and "END_HEADERS" not in f.flags:  # as gRPC core: no end, no growth
            self._protocol_error("an empty CONTINUATION without END_HEADERS", PROTOCOL_ERROR)
            return
        else:
            self.hblock += f.data
        if len(self.hblock) > MAX_HEADER_LIST:
            self._protocol_error(f"a header block over {MAX_HEADER_LIST} bytes", PROTOCOL_ERROR)
            return
        if "END_HEADERS" not in f.flags:
            return
        block, self.hblock = bytes(self.hblock), None
        headers = decode(block)  # decoded even for a stream we ended (a table's rule; ours is 0 bytes)
        s = self.streams.get(self.hstream)
        if s is not None:
            self._headers(s, headers, self.hend)

    def _headers(self, s: Stream, headers: dict[bytes, bytes], end: bool) -> None:
        """A stream's response headers (:status 200, gRPC content-type) or its trailers (grpc-status), which may
        come alone (Trailers-Only). Status mapping: doc/http-grpc-status-mapping.md, PROTOCOL-HTTP2.md."""
        if not s.got_headers:
            s.got_headers = True
            status = headers.get(b":status", b"")
            if status != b"200":
                code = HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)
                self.end_stream(s.id, code, f"the node answered HTTP status {status.decode(errors='replace')}", CANCEL)
                return
            if b"grpc-status" not in headers and not end:
                if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
                    self.end_stream(s.id, grpc.StatusCode.UNKNOWN, "the node's answer is not gRPC (content-type "
                                    f"{headers.get(b'content-type', b'').decode(errors='replace')!r})", CANCEL)
                return
        elif not end:
            self._protocol_error("trailers without END_STREAM", PROTOCOL_ERROR)
            return
        raw = headers.get(b"grpc-status")
        if raw is None:
            self.end_stream(s.id, grpc.StatusCode.UNKNOWN, "the node ended the call without grpc-status")
        elif raw != b"0":
            message = urllib.parse.unquote(headers.get(b"grpc-message", b"").decode(errors="replace"))
            self.end_stream(s.id, status_code(raw), message)
        elif s.need >= 0 or s.mbuf:
            self.end_stream(s.id, grpc.StatusCode.INTERNAL, "the node ended the call inside a message")
        elif s.msg is None:
            self.end_stream(s.id, grpc.StatusCode.INTERNAL, "the node ended a unary call without its answer")
        else:
            self.end_stream(s.id, None)
