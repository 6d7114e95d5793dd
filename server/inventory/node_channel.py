"""The aggregator's channels to its nodes (server/inventory/inventory_sync.py's streams, inventory_push.py's fetches):
their gRPC core options, their target for a node address, and the client tracing interceptors.

In a module of its own so inventory_sync.py stays under the ~400-line rule; inventory_sync re-exports these names.
"""

from __future__ import annotations

import socket
from typing import Any

from nodecompat.server.runtime.grpc_server import MESSAGE_SIZE_OPTIONS

# One channel (connection) per subscribed node: what each option saves was measured with 2,000 streams
# (VmRSS and tracemalloc, bench/bench_inventory.py's simulator): channelz off ~3.5 KiB (its trace nodes),
# retries off ~6 KiB (the retry filter's per-call state; a broken stream is resubscribed here, with the
# fingerprint held, never replayed by gRPC). tcp read-chunk and HPACK table sizes changed nothing measurable.
# A node's features message, received by a stream or a push fetch: real nodes send 10-100 KiB (a full
# kernel.config and hundreds of PCI functions stay near 1 MiB). Parsed into the store's Python form a message
# costs ~35x its size at peak (a 15 MiB one: ~550 MiB of aggregator RSS), so the 16 MiB gRPC limit let 32
# registrations answering such fetches take the aggregator to 2.7 GiB. A larger message fails the node's
# stream or fetch (RESOURCE_EXHAUSTED: UNREACHABLE) and ValidateFleet asks that node live.
MAX_FEATURES_MESSAGE_BYTES = 4 << 20
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    *[o for o in MESSAGE_SIZE_OPTIONS if o[0] != "grpc.max_receive_message_length"],
    ("grpc.max_receive_message_length", MAX_FEATURES_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.enable_channelz", 0),
    ("grpc.enable_retries", 0),
    # No BDP probing: it sizes HTTP/2 flow-control windows for bulk transfers by pinging on received data;
    # a watch stream carries a first message well inside the default 64 KiB window, then small heartbeats.
    # Measured with bench/bench_inventory.py's resubscribe (10,000 streams, with ipv4: targets below):
    # gRPC core's event-engine threads ~0.6 -> ~0.4 ms of CPU a node.
    ("grpc.http2.bdp_probe", 0),
    # TLS records this side writes of at most 1 KiB (TSI's lower bound; 16 KiB by default): gRPC's SSL frame
    # protector keeps a buffer of that size per connection for what the aggregator sends (its request, HTTP/2
    # WINDOW_UPDATE and PING frames); what it receives is unaffected. mTLS, 1,000 streams (RSS a node after
    # the first messages, 2 runs each): 130.7/128.8 -> 119.7/119.6 KB (4 KiB: 123.0/122.8). Nothing without TLS.
    ("grpc.tsi.max_frame_size", 1024),
]


def channel_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """(gRPC target, channel options) for a node address "HOST:PORT".

    An IP literal ("10.0.0.7:50051", "[fd00::7]:50051") becomes an `ipv4:`/`ipv6:` target (gRPC naming,
    doc/naming.md): the channel skips the DNS resolver, whose work for a literal is a resolution round on
    gRPC core's threads per channel. The authority (HTTP/2 :authority and the name a TLS certificate is
    checked against) is kept as the address itself through grpc.default_authority, exactly what the
    default dns: target would have used. Anything else (a host name) is passed through unchanged."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, CHANNEL_OPTIONS
    if host.startswith("[") and host.endswith("]"):
        family, bare, version = socket.AF_INET6, host[1:-1], 6
    else:
        family, bare, version = socket.AF_INET, host, 4
    try:
        socket.inet_pton(family, bare)  # strict literals only (no zone, no short IPv4 forms); C, not ipaddress
    except OSError:
        return address, CHANNEL_OPTIONS
    return f"ipv{version}:{address}", [*CHANNEL_OPTIONS, ("grpc.default_authority", address)]


def client_interceptors() -> list[Any] | None:
    """OpenTelemetry's grpc.aio client interceptors when tracing is asked for (OTEL_*), else None."""
    from nodecompat.server.telemetry import tracing_requested

    if not tracing_requested():
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


__all__ = ["CHANNEL_OPTIONS", "MAX_FEATURES_MESSAGE_BYTES", "channel_target", "client_interceptors"]
