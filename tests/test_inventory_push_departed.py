"""A push fetch that ends after its node left the fleet (server/inventory/inventory_push.py) must not put the node back
into the inventory store. A registrant announces a fingerprint for a node whose WatchFeatures answers
slowly (here 4 s, well within the 10 s fetch deadline), then stops heartbeating; its 1 s lease lapses and the
node leaves (store.remove) while the fetch is in flight. Before, the late answer was applied anyway: a
record for a node no longer in the fleet, pinning its feature set (counted against the store's byte limit)
for good -- a registrant repeating this with fresh addresses grew the store without bound.

Real parts: a real daemon on a fixture host gives the features; the slow node is a real gRPC server on a
real port replaying them; a real in-process aggregator."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from support_fleet import aggregator, first_watch_message, free_port, start_node

from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, inventory_pb2

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

ANSWER_AFTER = 4.0  # s the slow node takes to answer a fetch


@pytest.fixture()
def slow_node(tmp_path: Path) -> Iterator[tuple[str, str, threading.Event]]:
    """(address, fingerprint, answered): a gRPC server whose WatchFeatures answers after ANSWER_AFTER s."""
    real = start_node(tmp_path, "departed-1", "plain-vm")
    try:
        msg = first_watch_message(real.address)
    finally:
        real.kill()
    answered = threading.Event()

    def watch(request: inventory_pb2.WatchFeaturesRequest, context: grpc.ServicerContext) -> Iterator[object]:
        time.sleep(ANSWER_AFTER)
        yield msg
        answered.set()

    handler = grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
        "WatchFeatures": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString,
            response_serializer=inventory_pb2.WatchFeaturesResponse.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address, msg.features.fingerprint, answered
    finally:
        server.stop(0)


def test_a_fetch_ending_after_the_node_left_does_not_bring_it_back(
    slow_node: tuple[str, str, threading.Event],
) -> None:
    address, fp, answered = slow_node
    with aggregator(lease_ttl=1.0, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        agg_: AggregatorDaemon = agg
        assert agg_.store is not None and agg_.sync is not None and agg_.sync.push is not None
        req = fleet_pb2.RegisterNodeRequest(name="departed-1", address=address, ttl_seconds=1.0, round_id=1,
                                            fingerprint=fp)
        req.probed_at.GetCurrentTime()
        with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
            fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
                req, timeout=10, metadata=[(LEASE_KEY_METADATA, secrets.token_hex(32))])
        # no more heartbeats: the 1 s lease lapses while the fetch waits for the slow answer
        deadline = time.monotonic() + 30
        while agg_.sync.push.is_pushed(address) or any(n.address == address for n in agg_.inventory.nodes()):
            assert time.monotonic() < deadline, "the registration never lapsed"
            time.sleep(0.05)
        assert answered.wait(30), "the slow node never answered the fetch"
        time.sleep(1.0)  # the answer reaches the aggregator, the fetch ends, a reconcile or two pass
        assert all(n.address != address for n in agg_.inventory.nodes())
        rec = agg_.store.get(address)
        assert rec is None, f"a node that left the fleet is back in the inventory store: {rec}"
