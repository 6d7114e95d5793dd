"""InventorySync's channel target for a node address (server/inventory/inventory_sync.py channel_target).

IP literals go to gRPC's ipv4:/ipv6: resolvers (gRPC doc/naming.md) with the authority kept as the address
(what a dns: target would have used, and what a node certificate's IP SAN is checked against: the mTLS
inventory tests in tests/test_fleet_inventory_tls.py run through this path); anything else passes through.
A real subscription over each form is in tests/test_feature_watch.py (127.0.0.1) and below (::1).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from support_hosts import copy_fixture

from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.fleet.store import STATE_OK, FeatureStore
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import CHANNEL_OPTIONS, InventorySync, SyncConfig, channel_target
from nodecompat.server.node.feature_cache import FeatureCache
from nodecompat.server.node.feature_watch import FeatureWatchHub
from nodecompat.v1 import inventory_pb2


@pytest.mark.parametrize(("address", "target"), [
    ("127.0.0.1:50051", "ipv4:127.0.0.1:50051"),
    ("10.1.2.3:7", "ipv4:10.1.2.3:7"),
    ("[::1]:50051", "ipv6:[::1]:50051"),
    ("[fd00::7]:1", "ipv6:[fd00::7]:1"),
])
def test_ip_literals_skip_the_resolver_and_keep_their_authority(address: str, target: str) -> None:
    got, options = channel_target(address)
    assert got == target
    assert ("grpc.default_authority", address) in options
    assert all(o in options for o in CHANNEL_OPTIONS)


@pytest.mark.parametrize("address", [
    "node-7.example:50051",  # a host name: DNS as before
    "dns:///10.0.0.1:50051",  # an explicit scheme is the operator's
    "unix:/run/nodecompat.sock",
    "[1.2.3.4]:5",  # IPv4 in brackets is no URI gRPC accepts: left for gRPC to reject as before
    "::1",  # IPv6 without brackets and port
    "[fe80::1%eth0]:5",  # a zone would need percent-encoding in the URI
    "10.0.0.1",  # no port
    "10.1:5",  # a short IPv4 form inet_aton would take, no literal for gRPC
])
def test_anything_else_passes_through(address: str) -> None:
    assert channel_target(address) == (address, CHANNEL_OPTIONS)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_a_node_on_an_ipv6_literal_is_subscribed(tmp_path: Path) -> None:
    """A real probe round on a fixture host copy, served as WatchFeatures on [::1], held by the subscriber."""
    host = copy_fixture("h100-server", tmp_path)
    probes, errors = load_probes(None)
    cache = FeatureCache(ProbeRunner(probes, host, errors), interval=3600)
    hub = FeatureWatchHub("v6-node", max_watchers=3, slow_consumer_seconds=1.0)
    cache.on_round.append(hub.on_round)
    cache.start()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
            "WatchFeatures": grpc.unary_stream_rpc_method_handler(
                hub.watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString,
                response_serializer=inventory_pb2.WatchFeaturesResponse.SerializeToString),
        }),))
        port = server.add_insecure_port("[::1]:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    address = f"[::1]:{port}"
    store = FeatureStore()
    sync = InventorySync(lambda: [FleetNode("v6", address, {}, "file")], store,
                         config=SyncConfig(heartbeat=1, reconcile_interval=0.2))
    try:
        assert cache.current(timeout=30) is not None
        sync.start()
        deadline = time.monotonic() + 60
        while (rec := store.get(address)) is None or not rec.has_features:
            assert time.monotonic() < deadline, rec
            time.sleep(0.1)
        assert rec.state == STATE_OK
        assert rec.fingerprint == fingerprint(cache.current().features, {})  # type: ignore[union-attr]
    finally:
        sync.stop()
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        cache.stop()
