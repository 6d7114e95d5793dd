"""A node's features message larger than the inventory takes (server/inventory/inventory_sync.py
MAX_FEATURES_MESSAGE_BYTES, 4 MiB) is refused before it is parsed: the node is UNREACHABLE in the inventory
(the error says the message is too large) and ValidateFleet asks it live. Parsed, a features message costs
the aggregator ~35x its size (a 15 MiB one ~550 MiB; 32 registrations answering such fetches took it to
2.7 GiB of RSS under the former 16 MiB gRPC limit).

Real parts: a real daemon's features, inflated with flag elements to ~6 MiB and replayed by a real gRPC
server on a real port; a registration announcing it (push model); a real in-process aggregator."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from support_fleet import aggregator, first_watch_message, free_port, start_node

from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import MAX_FEATURES_MESSAGE_BYTES, SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, inventory_pb2

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")


@pytest.fixture()
def big_node(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(address, announced fingerprint) of a gRPC server whose WatchFeatures sends a ~6 MiB message."""
    real = start_node(tmp_path, "big-1", "plain-vm")
    try:
        msg = first_watch_message(real.address)
    finally:
        real.kill()
    flags = msg.features.features.flags["cpu.cpuid"].elements
    i = 0
    while msg.ByteSize() < MAX_FEATURES_MESSAGE_BYTES + (2 << 20):
        flags.extend(f"FLAG{i + j:08d}" for j in range(10_000))
        i += 10_000

    def watch(request: inventory_pb2.WatchFeaturesRequest, context: grpc.ServicerContext) -> Iterator[object]:
        yield msg

    handler = grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
        "WatchFeatures": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString,
            response_serializer=inventory_pb2.WatchFeaturesResponse.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address, msg.features.fingerprint
    finally:
        server.stop(0)


def test_a_features_message_past_the_inventory_limit_is_refused_unparsed(big_node: tuple[str, str]) -> None:
    address, fp = big_node
    with aggregator(lease_ttl=30.0, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        agg_: AggregatorDaemon = agg
        assert agg_.store is not None and agg_.sync is not None and agg_.sync.push is not None
        req = fleet_pb2.RegisterNodeRequest(name="big-1", address=address, round_id=1, fingerprint=fp)
        req.probed_at.GetCurrentTime()
        with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
            fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
                req, timeout=10, metadata=[(LEASE_KEY_METADATA, secrets.token_hex(32))])
        deadline = time.monotonic() + 60
        while True:
            rec = agg_.store.get(address)
            if rec is not None and (rec.has_features or rec.state == "UNREACHABLE"):
                break
            assert time.monotonic() < deadline, "the fetch never ended"
            time.sleep(0.05)
        assert not rec.has_features, "a features message past the limit was parsed into the store"
        assert rec.state == "UNREACHABLE" and "RESOURCE_EXHAUSTED" in rec.error, rec


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_a_streamed_features_message_past_the_limit_fails_the_stream(big_node: tuple[str, str], tmp_path: Path,
                                                                     transport: str) -> None:
    """The same limit on a nodes-file node's WatchFeatures stream, with either client (SyncConfig.watch_transport):
    RESOURCE_EXHAUSTED before the message is parsed, the node UNREACHABLE."""
    address, _ = big_node
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": "big-1", "address": address}]))
    with aggregator(nodes_file=str(nodes), sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2,
                                                           watch_transport=transport)) as agg:
        agg_: AggregatorDaemon = agg
        assert agg_.store is not None
        deadline = time.monotonic() + 60
        while (rec := agg_.store.get(address)) is None or rec.state != "UNREACHABLE":
            assert time.monotonic() < deadline, "the stream never failed"
            time.sleep(0.05)
        assert not rec.has_features and "RESOURCE_EXHAUSTED" in rec.error and "larger than max" in rec.error, rec
