"""NodeService.WatchFeatures (issue 12 item 1) and the aggregator's subscriber feeding the inventory:
real probes on a copy of a fixture host, a real gRPC server and clients on real ports."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_fleetmem import AioServer, load_module, unload_module
from support_hosts import copy_fixture

from nodecompat import wire
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.fleet.store import STATE_OK, STATE_UNREACHABLE, FeatureStore, NodeRecord
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import InventorySync, SyncConfig
from nodecompat.server.node.feature_cache import FeatureCache
from nodecompat.server.node.feature_watch import FeatureWatchHub
from nodecompat.v1 import inventory_pb2, node_pb2_grpc


class _Servicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, hub: FeatureWatchHub) -> None:
        self.WatchFeatures = hub.watch  # type: ignore[method-assign]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[FeatureCache, FeatureWatchHub, AioServer, Path]]:
    host = copy_fixture("h100-server", tmp_path)
    probes, errors = load_probes(None)
    cache = FeatureCache(ProbeRunner(probes, host, errors), interval=3600)
    hub = FeatureWatchHub("gpu-a", max_watchers=3, slow_consumer_seconds=1.0)
    cache.on_round.append(hub.on_round)
    cache.start()
    assert cache.current(timeout=30) is not None
    server = AioServer(_Servicer(hub))
    try:
        yield cache, hub, server, Path(host.root)
    finally:
        server.stop()
        cache.stop()


def _stub(address: str) -> node_pb2_grpc.NodeServiceStub:
    return node_pb2_grpc.NodeServiceStub(grpc.insecure_channel(address))


def held_with_features(store: FeatureStore, address: str, timeout: float) -> NodeRecord:
    """Poll every 50 ms until `store` holds `address` with its features; its record. AssertionError after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (rec := store.get(address)) is None or not rec.has_features:
        assert time.monotonic() < deadline, f"{address} not held with features in {timeout:g}s"
        time.sleep(0.05)
    return rec


def test_current_features_first_then_heartbeats_then_one_message_per_change(node) -> None:  # type: ignore[no-untyped-def]
    cache, _hub, server, root = node
    stream = _stub(server.address).WatchFeatures(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=1), timeout=60)
    first = next(stream)
    assert first.WhichOneof("item") == "features"
    ch = first.features
    features = wire.features_from_proto(ch.features)
    assert ch.node_name == "gpu-a" and ch.round_id >= 1 and ch.HasField("probed_at")
    assert ch.fingerprint == fingerprint(features, {}) and "nvidia" in features.flags["kernel.loadedmodule"].elements
    # nothing changes: heartbeats carrying the same fingerprint
    hb = next(stream)
    assert hb.WhichOneof("item") == "heartbeat"
    assert (hb.heartbeat.fingerprint, hb.heartbeat.heartbeat_seconds) == (ch.fingerprint, 1.0)
    # a round with the same features: a heartbeat with the new round id, not a features message
    cache.refresh()
    msg = next(stream)
    assert msg.WhichOneof("item") == "heartbeat" and msg.heartbeat.round_id > ch.round_id
    # a change: the module is unloaded on the host, the daemon re-probes
    unload_module(root, "nvidia")
    cache.refresh()
    msg = next(stream)
    while msg.WhichOneof("item") == "heartbeat":
        msg = next(stream)
    changed = wire.features_from_proto(msg.features.features)
    assert "nvidia" not in changed.flags["kernel.loadedmodule"].elements
    assert msg.features.fingerprint != ch.fingerprint and msg.features.round_id > ch.round_id
    stream.cancel()

    # a resubscribe with the fingerprint held is answered without the features
    again = _stub(server.address).WatchFeatures(
        inventory_pb2.WatchFeaturesRequest(known_fingerprint=msg.features.fingerprint), timeout=30)
    short = next(again)
    assert short.features.features_omitted and not short.features.HasField("features")
    assert short.features.fingerprint == msg.features.fingerprint
    again.cancel()


def test_watchers_are_bounded_and_a_slow_consumer_is_dropped_with_a_clear_status(node) -> None:  # type: ignore[no-untyped-def]
    cache, hub, server, root = node
    streams = [
        _stub(server.address).WatchFeatures(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=60), timeout=60)
        for _ in range(3)
    ]
    for s in streams:
        assert next(s).WhichOneof("item") == "features"
    with pytest.raises(grpc.RpcError) as err:
        next(_stub(server.address).WatchFeatures(inventory_pb2.WatchFeaturesRequest(), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "3 watchers" in (err.value.details() or "")
    # streams[0] stops reading; changes pile up past its flow-control window -> dropped
    for s in streams[1:]:
        s.cancel()
    deadline = time.monotonic() + 60
    flip = False
    while hub.dropped_slow == 0 and time.monotonic() < deadline:
        (unload_module if flip else load_module)(root, "nvidia_peermem_" + "x" * 200)
        flip = not flip
        cache.refresh()
    assert hub.dropped_slow == 1
    with pytest.raises(grpc.RpcError) as err:
        for _ in streams[0]:
            pass
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "slow consumer" in (err.value.details() or "")
    # Health of the slot: the dropped watcher's place is free again
    ok = _stub(server.address).WatchFeatures(inventory_pb2.WatchFeaturesRequest(), timeout=10)
    assert next(ok).WhichOneof("item") == "features"
    ok.cancel()


def test_subscriber_keeps_the_inventory_and_marks_a_vanished_node_unreachable(node) -> None:  # type: ignore[no-untyped-def]
    cache, _hub, server, root = node
    store = FeatureStore()
    members = [FleetNode("gpu-a", server.address, {"zone": "a"}, "file")]
    sync = InventorySync(lambda: members, store, config=SyncConfig(heartbeat=1, reconcile_interval=0.2))
    sync.start()
    try:
        deadline = time.monotonic() + 30
        rec = held_with_features(store, server.address, 30)
        assert rec.state == STATE_OK and rec.name == "gpu-a" and dict(rec.labels) == {"zone": "a"}
        feats, _ = store.node_features(rec)  # type: ignore[misc]
        assert rec.fingerprint == fingerprint(cache.current().features, {})  # type: ignore[union-attr]
        assert "nvidia" in feats.flags["kernel.loadedmodule"].elements
        # a change reaches the store
        unload_module(root, "nvidia")
        cache.refresh()
        while store.get(server.address).fingerprint == rec.fingerprint:  # type: ignore[union-attr]
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
        assert store.distinct_sets() == 1
        # the node goes away: UNREACHABLE, last features kept
        server.stop()
        while store.get(server.address).state != STATE_UNREACHABLE:  # type: ignore[union-attr]
            assert time.monotonic() < deadline + 60
            time.sleep(0.05)
        assert store.get(server.address).has_features  # type: ignore[union-attr]
        # it leaves the fleet: removed
        members.clear()
        while store.get(server.address) is not None:
            assert time.monotonic() < deadline + 90
            time.sleep(0.05)
        assert store.distinct_sets() == 0
    finally:
        sync.stop()


def test_a_subscriber_holds_no_message_while_it_waits_for_the_next(node) -> None:  # type: ignore[no-untyped-def]
    """The parsed features message (~5x its wire size) is not kept by the stream's coroutine until the next
    heartbeat: 10,000 streams held 16-28 KB of RSS a node that way (server/inventory/inventory_sync.py _subscribe)."""
    _cache, _hub, server, _root = node
    store = FeatureStore()
    sync = InventorySync(lambda: [FleetNode("gpu-a", server.address, {}, "file")], store,
                         config=SyncConfig(heartbeat=60, reconcile_interval=0.2))
    sync.start()
    try:
        held_with_features(store, server.address, 30)

        async def held() -> list[str]:  # on the inventory's loop: the subscriber is suspended in call.read()
            frame = sync._tasks[server.address].get_coro().cr_frame
            return [k for k, v in frame.f_locals.items() if isinstance(v, inventory_pb2.WatchFeaturesResponse)]

        time.sleep(0.2)
        assert asyncio.run_coroutine_threadsafe(held(), sync.loop).result(10) == []
    finally:
        sync.stop()


def test_a_node_that_never_answers_does_not_hold_up_the_others(node) -> None:  # type: ignore[no-untyped-def]
    """One connecting slot, a peer that accepts TCP but never speaks HTTP/2 first in line: the real node still
    gets its slot after connect_slot_seconds, long before gRPC gives up on the silent one (its 20 s connect
    timeout), so a resubscribe is not held up by dead nodes."""
    _cache, _hub, server, _root = node
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing is ever read or written
    silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
    store = FeatureStore()
    members = [FleetNode("silent", silent_address, {}, "file"), FleetNode("gpu-a", server.address, {}, "file")]
    sync = InventorySync(lambda: members, store, config=SyncConfig(
        heartbeat=1, max_connecting=1, connect_slot_seconds=0.5, reconcile_interval=0.2))
    sync.start()
    try:
        rec = held_with_features(store, server.address, 60)
        # the silent node has not failed yet: gpu-a did not wait for its attempt to end
        held = store.get(silent_address)
        assert held is None or held.state != STATE_UNREACHABLE, held
        assert rec.state == STATE_OK and sync.connects == 1
    finally:
        sync.stop()
        silent.close()
