"""Which client carries the inventory's WatchFeatures calls (SyncConfig.watch_transport), and one call on it.

Two clients, the same call (the node's WatchFeatures; read() gives messages then grpc.aio.EOF, errors are
grpc.aio.AioRpcError with gRPC core's status codes, close() ends it):
- "grpc": a gRPC core channel per call (node_channel.py's options, credentials, tracing interceptors): GrpcWatch;
- "h2": the lean HTTP/2 client (server/h2/watch.py's H2Watch: one `__slots__` object and one connection, no gRPC core
  channel), TLS from the PEM files of SyncConfig.watch_tls.

The h2 client cannot take its TLS from a grpc.ChannelCredentials object (gRPC does not expose the certificates
inside one), so a sync given credentials but no PEM files (programmatic use: InventorySync(credentials=...),
AggregatorConfig(node_credentials=...)) uses the grpc client, with one WARNING naming what to pass instead
(choose_h2): it never fails at run time for that. Hand-written glue: a choice and a 3-method adapter.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import grpc

from nodecompat.server.tls import ClientTls

if TYPE_CHECKING:
    from nodecompat.server.h2.call import H2Options

log = logging.getLogger(__name__)

WATCH_METHOD = "/nodecompat.v1.NodeService/WatchFeatures"
TRANSPORTS = ("grpc", "h2")  # SyncConfig.watch_transport, aggregator --watch-transport


def choose_h2(transport: str, files: ClientTls | None, credentials: bool, trace: bool,
              max_message: int) -> H2Options | None:
    """The h2 client's options when `transport` is "h2" and it can be used, else None (the grpc client).

    files: the PEM files (SyncConfig.watch_tls); credentials: the sync has grpc channel credentials (TLS);
    trace: client spans asked for; max_message: bytes. h2 with credentials but no PEM files is None, logged at
    WARNING (once per call: InventorySync.start() calls it once). Raises ValueError for an unknown transport,
    TlsConfigError / ssl.SSLError for unreadable or bad PEM files (as channel_credentials does)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"watch transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if transport != "h2":
        return None
    if credentials and (files is None or not files.enabled):
        log.warning("inventory WatchFeatures calls use the grpc client, not h2: the sync was given TLS channel "
                    "credentials without their PEM files; pass SyncConfig(watch_tls=ClientTls(ca, cert, key)) "
                    "with the files the credentials were made from (the aggregator's --tls-* flags do), or "
                    "SyncConfig(watch_transport='grpc') to choose grpc and silence this")
        return None
    from nodecompat.server.h2.call import h2_options

    return h2_options(files, credentials, trace, max_message)


def with_deadline(opts: H2Options, timeout: float | None) -> H2Options:
    """The same options with the call's deadline (grpc-timeout) of `timeout` seconds (None: none)."""
    return opts if timeout == opts.timeout else dataclasses.replace(opts, timeout=timeout)


class GrpcWatch:
    """One WatchFeatures call on its own gRPC core channel, with H2Watch's read() and close(): the request as
    bytes (kept by the call for the stream's life), `deserialize` the response parser, `timeout` the call's
    deadline in seconds (None: none)."""

    __slots__ = ("call", "channel")

    def __init__(self, channel: grpc.aio.Channel, request: bytes, deserialize: Any,
                 timeout: float | None = None) -> None:
        self.channel = channel
        self.call = channel.unary_stream(  # one method handle, not a stub's four
            WATCH_METHOD, request_serializer=None, response_deserializer=deserialize)(request, timeout=timeout)

    async def read(self) -> Any:
        """The next message; grpc.aio.EOF at the end. Raises grpc.aio.AioRpcError."""
        return await self.call.read()

    async def close(self, grace: float | None = None) -> None:
        """Cancel the call if open and close the channel (its connection); idempotent."""
        await self.channel.close(grace)


__all__ = ["TRANSPORTS", "WATCH_METHOD", "GrpcWatch", "choose_h2", "with_deadline"]
