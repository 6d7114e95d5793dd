"""What the lean WatchFeatures client (server/h2/watch.py) shares with the gRPC path: its errors (a
grpc.aio.AioRpcError, so InventorySync's handling is unchanged), the status mappings of the gRPC HTTP/2 spec
(doc/PROTOCOL-HTTP2.md, doc/http-grpc-status-mapping.md), the client span the gRPC path's OpenTelemetry
interceptor makes (name = the method, kind CLIENT, rpc.* attributes, traceparent sent), and the TLS context made
from the same PEM files as server/tls.py channel_credentials (ALPN h2, TLS 1.2+, client certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from dataclasses import dataclass
from typing import Any

import grpc
import hpack
import hpack.hpack
from hyperframe import frame as hf

from nodecompat.server.tls import ClientTls, _read_pem

METHOD = "/nodecompat.v1.NodeService/WatchFeatures"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE we keep (the default): a larger frame is a FRAME_SIZE_ERROR
MAX_HEADER_LIST = 16384  # bytes of decoded headers or trailers we take (advertised)
_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}
# RST_STREAM error code -> status (PROTOCOL-HTTP2.md "Errors")
RST_TO_GRPC = {0x0: grpc.StatusCode.INTERNAL, 0x1: grpc.StatusCode.INTERNAL, 0x2: grpc.StatusCode.INTERNAL,
               0x3: grpc.StatusCode.INTERNAL, 0x4: grpc.StatusCode.INTERNAL, 0x6: grpc.StatusCode.INTERNAL,
               0x7: grpc.StatusCode.UNAVAILABLE, 0x8: grpc.StatusCode.CANCELLED, 0x9: grpc.StatusCode.INTERNAL,
               0xA: grpc.StatusCode.INTERNAL, 0xB: grpc.StatusCode.RESOURCE_EXHAUSTED,
               0xC: grpc.StatusCode.PERMISSION_DENIED}
# HTTP :status other than 200 -> status (http-grpc-status-mapping.md)
HTTP_TO_GRPC = {b"400": grpc.StatusCode.INTERNAL, b"401": grpc.StatusCode.UNAUTHENTICATED,
                b"403": grpc.StatusCode.PERMISSION_DENIED, b"404": grpc.StatusCode.UNIMPLEMENTED,
                b"429": grpc.StatusCode.UNAVAILABLE, b"502": grpc.StatusCode.UNAVAILABLE,
                b"503": grpc.StatusCode.UNAVAILABLE, b"504": grpc.StatusCode.UNAVAILABLE}


@dataclass(frozen=True)
class H2Options:
    """How to reach the nodes: TLS context (ALPN h2, client certificate; None: plaintext), :authority override
    (None: the address, as the gRPC path's grpc.default_authority), limits in bytes and seconds."""

    ssl: ssl.SSLContext | None = None
    authority: str | None = None
    max_message: int = 4 << 20
    window: int = 256 * 1024  # the stream's and the connection's receive window, bytes
    connect_timeout: float = 20.0  # TCP + TLS + the peer's first SETTINGS, s
    keepalive: float = 20.0  # s of silence before a PING
    keepalive_timeout: float = 10.0  # s for its ACK
    timeout: float | None = None  # the call's deadline (grpc-timeout), s; None: none, as the gRPC path
    trace: bool = False  # a client span, traceparent sent (server/telemetry.py tracing_requested())


def h2_options(files: ClientTls | None, tls: bool, trace: bool, max_message: int) -> H2Options:
    """The options InventorySync's h2 streams share: `tls` (the gRPC path has channel credentials) needs `files`,
    the PEM files they were made from. Raises ValueError without them, TlsConfigError/ssl.SSLError for bad files."""
    if tls and (files is None or not files.enabled):
        raise ValueError("--watch-transport h2 under TLS needs the PEM files (SyncConfig.watch_tls)")
    return H2Options(ssl=ssl_context(files) if tls and files is not None else None, max_message=max_message,
                     trace=trace)


class H2WatchError(grpc.aio.AioRpcError):
    """The call's end with a status other than OK: code() and details() as a grpc.aio call's error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


CLOSE_GRACE = 2.0  # s a closed connection has to hand the peer what we wrote last (a GOAWAY, an RST_STREAM)


def close_transport(transport: asyncio.Transport) -> None:
    """Close a connection's transport, flushing what is written; aborted (its buffer dropped, the socket closed)
    when the peer has not read it CLOSE_GRACE s later. asyncio's close() alone waits for a peer that stopped
    reading for ever: its socket and our unread writes (up to the write bound: 64 KiB, max_message + 64 KiB) kept,
    once per reconnection to a node that never reads."""
    transport.close()
    if transport.get_write_buffer_size():
        try:
            asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        except RuntimeError:  # no loop running here: nothing would flush it
            with contextlib.suppress(RuntimeError):  # (its loop closed: its socket is closed by its owner)
                transport.abort()


def status_code(raw: bytes) -> grpc.StatusCode:
    """grpc-status's value -> StatusCode (UNKNOWN for a value that is not one)."""
    try:
        return _BY_VALUE.get(int(raw), grpc.StatusCode.UNKNOWN)
    except ValueError:
        return grpc.StatusCode.UNKNOWN


def authority_of(authority: str) -> str:
    """The host a certificate is checked against: "host:port" / "[v6]:port" -> host, as gRPC core does."""
    host, sep, port = authority.rpartition(":")
    if not sep or not port.isdigit():
        host = authority
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def ssl_context(files: ClientTls) -> ssl.SSLContext:
    """Client TLS from the PEM files of server/tls.py (CA: `ca` or the system roots; `cert`+`key` presented).

    Raises TlsConfigError naming the flag for an unreadable or non-PEM file, ssl.SSLError for bad contents."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca:
        ctx.load_verify_locations(cadata=_read_pem(files.ca, "--tls-ca").decode())
    if files.cert or files.key:
        if not (files.cert and files.key):
            from nodecompat.server.tls import TlsConfigError

            raise TlsConfigError("a client certificate needs both --tls-cert and --tls-key")
        _read_pem(files.cert, "--tls-cert")
        _read_pem(files.key, "--tls-key")
        ctx.load_cert_chain(files.cert, files.key)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def start_span(trace_on: bool) -> Any:
    """The client span the gRPC path's interceptor starts (opentelemetry-instrumentation-grpc), or None."""
    if not trace_on:
        return None
    from opentelemetry import trace

    service, method = METHOD.lstrip("/").split("/", 1)
    return trace.get_tracer("nodecompat.server.h2.watch").start_span(
        METHOD, kind=trace.SpanKind.CLIENT, attributes={"rpc.system": "grpc", "rpc.method": method,
                                                        "rpc.service": service, "rpc.grpc.status_code": 0})


def trace_headers(span: Any) -> list[tuple[str, str]]:
    """traceparent (and tracestate, baggage) for the span, as the interceptor injects them in the metadata."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return [(k.lower(), v) for k, v in carrier.items()]


def end_span(span: Any, error: H2WatchError | None) -> None:
    """End the span; an error sets its status code attribute and ERROR status, as the interceptor does."""
    if error is not None:
        from opentelemetry.trace.status import Status, StatusCode

        span.set_attribute("rpc.grpc.status_code", error.code().value[0])
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error.details()}"))
    span.end()


def request_frames(authority: str, request: bytes, opts: H2Options, span: Any) -> bytes:
    """What the client writes first: the preface, SETTINGS (header table 0, push off, one stream, opts.window),
    the connection's WINDOW_UPDATE up to opts.window, HEADERS for POST METHOD (grpc-timeout with opts.timeout,
    traceparent with a span) and the request as one length-prefixed message with END_STREAM. The header block
    starts with a dynamic table size update to 0 and adds no entry (the node keeps none of ours).

    Without a span, everything but :authority and the request is the same for every call with the same scheme,
    deadline and window: those bytes are built once (_fixed_parts, a few entries) and :authority is a literal
    without indexing (RFC 7541 6.2.2, name index 1) between the pseudo-headers and the rest."""
    if span is not None:
        return _request_frames_traced(authority, request, opts, span)
    start, pseudo, rest = _fixed_parts(opts.ssl is not None, opts.timeout, opts.window)
    raw = authority.encode()
    block = b"".join((pseudo, b"\x01", hpack.hpack.encode_integer(len(raw), 7), raw, rest))
    return b"".join((start, _frame_header(len(block), 0x1, 0x4), block, _data_frames(request)))


def _frame_header(length: int, kind: int, flags: int, stream: int = 1) -> bytes:
    return length.to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")


def _data_frames(request: bytes) -> bytes:
    """The request as one length-prefixed gRPC message in DATA frames of at most MAX_FRAME, END_STREAM on the last."""
    body = b"\x00" + len(request).to_bytes(4, "big") + request
    out = []
    for i in range(0, len(body), MAX_FRAME):
        chunk = body[i:i + MAX_FRAME]
        out.append(_frame_header(len(chunk), 0x0, 0x1 if i + MAX_FRAME >= len(body) else 0x0) + chunk)
    return b"".join(out)


def _settings(window: int) -> bytes:
    settings = hf.SettingsFrame(0, settings={
        hf.SettingsFrame.HEADER_TABLE_SIZE: 0, hf.SettingsFrame.ENABLE_PUSH: 0,
        hf.SettingsFrame.MAX_CONCURRENT_STREAMS: 1, hf.SettingsFrame.INITIAL_WINDOW_SIZE: window,
        hf.SettingsFrame.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST})
    out = [PREFACE, settings.serialize()]
    if window > 65535:
        out.append(hf.WindowUpdateFrame(0, window_increment=window - 65535).serialize())
    return b"".join(out)


def _headers(tls: bool, timeout: float | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The request's headers before :authority and after it."""
    rest = [("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "nodecompat-h2watch")]
    if timeout is not None:
        rest.append(("grpc-timeout", f"{max(1, int(timeout * 1000))}m"))
    return [(":method", "POST"), (":scheme", "https" if tls else "http"), (":path", METHOD)], rest


def _encode(headers: list[tuple[str, str]]) -> bytes:
    """A header block that starts with a table size update to 0 (the encoder's table is 0 too: no entry is ever
    referred to)."""
    enc = hpack.Encoder()
    enc.header_table_size = 0
    return enc.encode(headers)


@functools.lru_cache(maxsize=16)
def _fixed_parts(tls: bool, timeout: float | None, window: int) -> tuple[bytes, bytes, bytes]:
    """(preface + SETTINGS + WINDOW_UPDATE, the header block's start: table size update and pseudo-headers, its
    end: the other headers without the table size update)."""
    pseudo, rest = _headers(tls, timeout)
    tail = _encode(rest)
    assert tail[:1] == b"\x20"  # the table size update to 0, once per block: at its start
    return _settings(window), _encode(pseudo), tail[1:]


def _request_frames_traced(authority: str, request: bytes, opts: H2Options, span: Any) -> bytes:
    """request_frames with the span's trace headers (they differ per call: nothing is kept)."""
    pseudo, rest = _headers(opts.ssl is not None, opts.timeout)
    block = _encode([*pseudo, (":authority", authority), *rest, *trace_headers(span)])
    return b"".join((_settings(opts.window), _frame_header(len(block), 0x1, 0x4), block, _data_frames(request)))
