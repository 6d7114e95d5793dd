"""What to add to a failed call's message so a person knows what to do next.

Three cases the bare gRPC status leaves a person guessing about:
- UNIMPLEMENTED "Method not found": the address answers gRPC but is the other kind of nodecompat server
  (`--node` given the aggregator's address, or `--aggregator` a daemon's). The server's own health
  service says which services it serves (grpc.health.v1 Check with a service name: SERVING or
  NOT_FOUND), so we ask it and name the server that was reached and the flag to use.
- UNAVAILABLE with "Connection refused": nothing listens there. That is not a TLS problem, so instead
  of the TLS hint we say that no server listens and how one is started.
- UNAVAILABLE from the transport otherwise (handshake, socket closed...): a TLS mismatch looks like
  that, so the TLS hint of clients/tls_args.py applies.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

NODE_SERVICE = "nodecompat.v1.NodeService"
FLEET_SERVICE = "nodecompat.v1.FleetService"

# want -> (service wanted, the flag the user gave, how the wanted kind of server is started)
_KINDS = {
    "node": (NODE_SERVICE, "--node", "`nodecompat serve` or `make run`"),
    "aggregator": (FLEET_SERVICE, "--aggregator", "`nodecompat aggregator`"),
}


def served_services(address: str, credentials: grpc.ChannelCredentials | None, timeout: float = 2.0) -> set[str]:
    """Which of NodeService / FleetService the server at `address` reports SERVING or NOT_SERVING through
    its health service (empty when it has no health service or cannot be asked)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nodecompat.server.tls import open_channel

    found: set[str] = set()
    try:
        channel = open_channel(address, credentials)
    except Exception:
        return found
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in (NODE_SERVICE, FLEET_SERVICE):
            try:
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.RpcError:
                continue
            found.add(service)
    return found


def wrong_server_hint(want: str, address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """` (ADDRESS is the fleet aggregator, not a node daemon: ...)` or a generic hint."""
    service, flag, start = _KINDS[want]
    services = served_services(address, credentials)
    if FLEET_SERVICE in services and want == "node":
        return (f" ({address} is a nodecompat fleet aggregator (FleetService), not a node daemon: "
                f"ask it with `nodecompat fleet nodes|validate --aggregator {address}`, "
                f"or give --node a node daemon's address)")
    if NODE_SERVICE in services and want == "aggregator":
        return (f" ({address} is a nodecompat node daemon (NodeService), not a fleet aggregator: "
                f"ask it with `nodecompat features|validate --node {address}`, "
                f"or give --aggregator an aggregator's address)")
    return (f" ({address} answers gRPC but does not serve {service}: {flag} wants the address of a server "
            f"started with {start})")


def refused_hint(want: str, address: str) -> str:
    _service, flag, start = _KINDS[want]
    return f" (nothing listens on {address}: start one with {start}, or give {flag} the address it serves on)"


def explain(args: argparse.Namespace, code: str, message: str, want: str, address: str) -> str:
    """A hint to append to a failed call's `CODE: message` (empty when there is nothing useful to add).

    want: "node" (the caller dialled --node) or "aggregator" (--aggregator)."""
    if code == "UNIMPLEMENTED" and "method not found" in message.lower():
        from nodecompat.clients.tls_args import channel_credentials_from_args

        try:
            creds = channel_credentials_from_args(args)
        except Exception:
            creds = None
        return wrong_server_hint(want, address, creds)
    if code == "UNAVAILABLE":
        if "connection refused" in message.lower():
            return refused_hint(want, address)
        from nodecompat.clients.tls_args import unavailable_hint

        return unavailable_hint(args, message)
    return ""
