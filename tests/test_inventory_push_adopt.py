"""The push model's adoption (server/inventory/inventory_push.py): a registered daemon whose fingerprint the aggregator
already holds for another node is held from that set plus the identity its registration carries
(RegisterNodeRequest.identity, system.name nodename), without a fetch; its identity is its own, so a spec
reading system.name nodename answers per node, from the inventory as live. A registration whose identity
is not an identity attribute, or is too long, is INVALID_ARGUMENT."""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest
from support_fleet import aggregator, start_node
from support_fleet import wait_until as _wait
from support_hosts import copy_fixture

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

LEASE_TTL = 9.0

NODENAME_IS = """
version: v1alpha1
compatibilities:
- description: pinned to one node
  rules:
  - name: this node
    matchFeatures:
    - feature: system.name
      matchExpressions:
        nodename: {{op: In, value: [{name}]}}
"""


def _held(agg: AggregatorDaemon, address: str) -> bool:
    assert agg.store is not None
    rec = agg.store.get(address)
    return rec is not None and rec.has_features and rec.state == "OK"


def test_a_second_node_with_a_held_fingerprint_is_held_without_a_fetch(tmp_path: Path) -> None:
    tmp = tmp_path
    with aggregator(lease_ttl=LEASE_TTL, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        address = agg.address  # type: ignore[attr-defined]
        assert agg.sync is not None and agg.sync.push is not None and agg.store is not None
        push = agg.sync.push
        procs = []
        fetched = []  # push.fetches once each node is held
        try:
            for name in ("twin-1", "twin-2"):  # one after the other: the second finds the first's set held
                root = Path(copy_fixture("h100-server", tmp / name).root)
                procs.append(p := start_node(tmp, name, "h100-server", root=root, wait=False,
                                             args=["--register", address, "--labels", f"twin={name}"]))
                p.wait_serving()
                _wait(lambda p=p: _held(agg, p.address), what=f"{name} in the inventory")  # type: ignore[misc]
                fetched.append(push.fetches)
            first, second = (agg.store.get(p.address) for p in procs)
            assert first is not None and second is not None
            assert fetched[0] >= 1 and fetched[1] == fetched[0] == push.fetches  # no fetch for twin-2
            assert push.adopted == 1
            assert agg.sync.subscriptions() == 0 and agg.store.distinct_sets() == 1
            assert second.fingerprint == first.fingerprint
            assert second.identity == (("system.name", "nodename", "twin-2"),)
            assert first.identity == (("system.name", "nodename", "twin-1"),)
            assert second.name == "twin-2" and dict(second.labels) == {"twin": "twin-2"}  # as a fetch sets them
            with FleetClient(address) as c:
                for name in ("twin-1", "twin-2"):
                    spec = NODENAME_IS.format(name=name)
                    inv = c.validate(spec_text=spec, timeout=20)
                    live = c.validate(spec_text=spec, live=True, timeout=20)
                    assert {n.source for n in inv.nodes} == {"INVENTORY"}  # type: ignore[attr-defined]
                    assert {n.name: n.compatible for n in inv.nodes} == {
                        "twin-1": name == "twin-1", "twin-2": name == "twin-2"}
                    assert {n.name: (n.compatible, tuple(n.reasons)) for n in inv.nodes} == {
                        n.name: (n.compatible, tuple(n.reasons)) for n in live.nodes}
        finally:
            for p in procs:
                p.kill()


def test_a_bad_identity_is_invalid_argument() -> None:
    with aggregator(lease_ttl=LEASE_TTL, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        channel = grpc.insecure_channel(agg.address)  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        md = [(LEASE_KEY_METADATA, secrets.token_hex(32))]
        fp = "sha256:" + "a" * 64
        try:
            bad = [({"kernel.version": {"full": "6.1"}}, "kernel.version"),  # not an identity feature
                   ({"system.name": {"sysname": "Linux"}}, "sysname"),  # not an identity element
                   ({"system.name": {"nodename": "n" * 10240}}, "253"),  # 10 KB value
                   ({"system.name": {"nodename": ""}}, "253")]
            for identity, said in bad:
                req = fleet_pb2.RegisterNodeRequest(name="bad-1", address="127.0.0.1:1", fingerprint=fp)
                for feature, elements in identity.items():
                    req.identity[feature].elements.update(elements)
                with pytest.raises(grpc.RpcError) as err:
                    stub.RegisterNode(req, timeout=5, metadata=md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, identity
                assert said in (err.value.details() or ""), err.value.details()
            # identity without a fingerprint: nothing to adopt it into
            req = fleet_pb2.RegisterNodeRequest(name="bad-1", address="127.0.0.1:1")
            req.identity["system.name"].elements["nodename"] = "bad-1"
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterNode(req, timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert agg.store is not None and agg.store.records() == []
        finally:
            channel.close()
