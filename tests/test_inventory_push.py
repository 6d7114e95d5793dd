"""The push model (server/inventory/inventory_push.py): real `nodecompat serve --register` daemons on copies of fixture
hosts behind a real in-process aggregator. Their heartbeats carry the feature state; the aggregator fetches
the features once per change and holds no stream or channel to them; a host change reaches WatchFleet
through the heartbeat; heartbeat silence is STALE; an old-style registration (no fingerprint) still gets a
stream; a registrant flipping fingerprints is rate-limited and a malformed one refused."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from support_fleet import Proc, aggregator, start_node
from support_fleet import wait_until as _wait
from support_fleetmem import NVIDIA_ONLY, load_module, unload_module
from support_hosts import copy_fixture
from test_fleet_inventory import _refresh, _Watch

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.server.node.registration import LeaseKeeper
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

LEASE_TTL = 9.0  # heartbeats every 3 s; STALE after 2 x 3 + 1 = 7 s of silence; the lease lapses at 9 s
HOSTS = {"gpu-1": "h100-server", "gpu-2": "h100-server", "vm-1": "plain-vm"}


@dataclass
class PushFleet:
    nodes: dict[str, Proc]
    roots: dict[str, Path]
    agg: AggregatorDaemon
    address: str
    tmp: Path


def _synced(agg: AggregatorDaemon, names: set[str]) -> bool:
    assert agg.store is not None
    recs = agg.store.records()
    return {r.name for r in recs} >= names and all(r.has_features and r.state == "OK" for r in recs
                                                   if r.name in names)


@pytest.fixture(scope="module")
def push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushFleet]:
    tmp = tmp_path_factory.mktemp("push")
    roots = {name: Path(copy_fixture(host, tmp / name).root) for name, host in HOSTS.items()}
    with aggregator(lease_ttl=LEASE_TTL, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        address = agg.address  # type: ignore[attr-defined]
        procs = {name: start_node(tmp, name, HOSTS[name], root=roots[name], wait=False,
                                  args=["--register", address, "--labels", f"host={HOSTS[name]}"]) for name in HOSTS}
        try:
            for p in procs.values():
                p.wait_serving()
            _wait(lambda: _synced(agg, set(HOSTS)), what="every registered node in the inventory")
            yield PushFleet(procs, roots, agg, address, tmp)
        finally:
            for p in procs.values():
                p.kill()


def test_registered_daemons_are_in_the_inventory_with_no_stream_or_channel_held(push: PushFleet) -> None:
    agg = push.agg
    assert agg.sync is not None and agg.sync.push is not None and agg.store is not None
    # no WatchFeatures stream held, no fetch channel left open
    _wait(lambda: agg.sync.push.open_channels == 0 and agg.sync.subscriptions() == 0, 30,  # type: ignore[union-attr]
          "no stream or channel held")
    assert agg.sync.push.addresses() == {p.address for p in push.nodes.values()}
    assert agg.store.distinct_sets() == 2  # gpu-1 and gpu-2 (identical hosts) share one stored set
    recs = {r.name: r for r in agg.store.records()}
    assert recs["gpu-1"].fingerprint == recs["gpu-2"].fingerprint != recs["vm-1"].fingerprint
    assert dict(recs["vm-1"].labels) == {"host": "plain-vm"}
    with FleetClient(push.address) as c:
        inv = c.validate(spec_text=NVIDIA_ONLY, timeout=20)
        live = c.validate(spec_text=NVIDIA_ONLY, live=True, timeout=20)
    assert {n.source for n in inv.nodes} == {"INVENTORY"}  # type: ignore[attr-defined]
    assert {n.name: (n.compatible, tuple(n.reasons)) for n in inv.nodes} == {
        n.name: (n.compatible, tuple(n.reasons)) for n in live.nodes}
    assert {n.name: n.compatible for n in inv.nodes} == {"gpu-1": True, "gpu-2": True, "vm-1": False}
    # as_of is the probe time the heartbeats carry
    for n in inv.nodes:
        as_of = datetime.fromisoformat(n.as_of.replace("Z", "+00:00")).timestamp()  # type: ignore[attr-defined]
        assert abs(as_of - recs[n.name].probed_at) < 1e-3


def test_a_host_change_reaches_watch_fleet_through_the_heartbeat(push: PushFleet) -> None:
    agg = push.agg
    assert agg.sync is not None and agg.sync.push is not None
    spec = push.tmp / "nvidia.yaml"
    spec.write_text(NVIDIA_ONLY)
    w = _Watch(push.address, spec)
    try:
        initial = [w.next() for _ in range(len(HOSTS) + 1)]
        assert {e["node"]: e["state"] for e in initial if "node" in e} == {
            "gpu-1": "COMPATIBLE", "gpu-2": "COMPATIBLE", "vm-1": "INCOMPATIBLE"}
        fetches = agg.sync.push.fetches
        unload_module(push.roots["gpu-2"], "nvidia")
        _refresh(push.nodes["gpu-2"])
        ev, took = w.until("gpu-2", "INCOMPATIBLE")
        print(f"push drift: refresh -> WatchFleet INCOMPATIBLE in {took:.2f}s (lease beat {LEASE_TTL / 3:g}s)")
        assert any("nvidia" in r for r in ev["reasons"])  # type: ignore[attr-defined]
        assert agg.sync.push.fetches > fetches and agg.sync.subscriptions() == 0
        load_module(push.roots["gpu-2"], "nvidia")
        _refresh(push.nodes["gpu-2"])
        w.until("gpu-2", "COMPATIBLE")
        _wait(lambda: agg.sync.push.open_channels == 0, 30, "the fetch to end")  # type: ignore[union-attr]
        assert agg.sync.subscriptions() == 0
    finally:
        w.stop()


def test_heartbeat_silence_is_stale_and_validate_fleet_asks_live(push: PushFleet) -> None:
    spec = push.tmp / "nvidia2.yaml"
    spec.write_text(NVIDIA_ONLY)
    w = _Watch(push.address, spec)
    stopped = push.nodes["gpu-1"]
    try:
        for _ in range(len(HOSTS) + 1):
            w.next()
        os.kill(stopped.proc.pid, signal.SIGSTOP)  # no heartbeat, no answer
        ev, took = w.until("gpu-1", "STALE", timeout=LEASE_TTL + 30)
        print(f"SIGSTOP -> STALE in {took:.2f}s: {ev}")
        assert "heartbeat" in str(ev.get("error", "")) + str(ev.get("reasons", ""))
        with FleetClient(push.address) as c:
            a = c.validate(spec_text=NVIDIA_ONLY, timeout=3)
        gpu1 = next(n for n in a.nodes if n.name == "gpu-1")
        assert gpu1.source == "LIVE" and gpu1.status != "OK"  # type: ignore[attr-defined]
        os.kill(stopped.proc.pid, signal.SIGCONT)
        w.until("gpu-1", "COMPATIBLE", timeout=30)
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)
        w.stop()


def test_a_registration_without_a_fingerprint_still_gets_a_stream(push: PushFleet) -> None:
    agg = push.agg
    assert agg.sync is not None and agg.sync.push is not None and agg.store is not None
    old = start_node(push.tmp, "old-1", "amd-mi300")  # not registering itself: the keeper below does it
    keeper = LeaseKeeper(push.address, name="old-1", address=old.address)  # no feature_state: an older daemon
    try:
        keeper.start()
        _wait(lambda: (r := agg.store.get(old.address)) is not None and r.has_features,  # type: ignore[union-attr]
              what="the old-style node in the inventory")
        assert agg.sync.subscriptions() == 1 and old.address not in agg.sync.push.addresses()
    finally:
        keeper.stop()
        old.kill()
    _wait(lambda: agg.sync.subscriptions() == 0, 30, "the stream to end with the registration")  # type: ignore[union-attr]


def test_fingerprint_flipping_is_rate_limited_and_malformed_ones_refused(push: PushFleet) -> None:
    agg = push.agg
    assert agg.sync is not None and agg.sync.push is not None
    target = start_node(push.tmp, "flip-1", "plain-vm")
    channel = grpc.insecure_channel(push.address)
    stub = fleet_pb2_grpc.FleetServiceStub(channel)
    md = [(LEASE_KEY_METADATA, secrets.token_hex(32))]
    try:
        for bad in ("sha256:" + "G" * 64, "sha256:" + "a" * 63, "md5:abc", "sha256:" + "a" * 64 + "\n"):
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="flip-1", address=target.address,
                                                                fingerprint=bad), timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fingerprint" in (err.value.details() or "")
        before = agg.sync.push.fetches
        start = time.monotonic()
        calls = 0
        while time.monotonic() - start < 4.0:  # a new fingerprint on every call, as fast as it goes
            stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="flip-1", address=target.address, round_id=calls,
                                                            fingerprint="sha256:" + secrets.token_hex(32)),
                              timeout=5, metadata=md)
            calls += 1
        elapsed = time.monotonic() - start
        fetched = agg.sync.push.fetches - before
        print(f"{calls} flipping heartbeats in {elapsed:.1f}s -> {fetched} fetches")
        # at most one fetch in flight per node and >= MIN_FETCH_INTERVAL (1 s) between starts, more after
        # fetches whose answer does not match the announcement
        assert calls > 20 and 1 <= fetched <= elapsed / 1.0 + 1
        rec = agg.store.get(target.address)  # type: ignore[union-attr]
        assert rec is not None and rec.has_features  # what it really serves, fetched from it
        stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="flip-1"), timeout=5, metadata=md)
    finally:
        channel.close()
        target.kill()
