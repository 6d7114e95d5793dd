"""Aggregator replicas sharing registrations through a real etcd (issue 14, first slice): two in-process
aggregators with `--store etcd://` on one Debian etcd-server; a real `nodecompat serve --register` daemon
registers through one and is listed and validated through the other; its etcd lease lapsing removes it from
both (and from etcd); an address claimed through both replicas at once goes to exactly one
(server/inventory/store_etcd.py: one transaction per claim)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest
from etcd3gw import Etcd3Client
from support_daemon import free_port, stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, etcd, start_etcd, wait_for  # noqa: F401 (fixture)
from support_fleet import SPEC_ANY, start_node

from nodecompat.clients.fleet_client import FleetClient, NodeEntry
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.server.inventory.registration_store import open_registration_store
from nodecompat.server.inventory.store_etcd import parse_store_url
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)  # identity is tests/test_fleet_identity.py's subject


@contextlib.contextmanager
def replicas(store: str, prefix: str, n: int = 2, lease_ttl: float = 2.0) -> Iterator[list[AggregatorDaemon]]:
    aggs: list[AggregatorDaemon] = []
    try:
        for _ in range(n):
            d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=lease_ttl, registration=OPEN,
                                                  sync=None, store=store, store_prefix=prefix,
                                                  store_watch_read_timeout=WATCH_READ_TIMEOUT))
            d.address = f"127.0.0.1:{d.start()}"  # type: ignore[attr-defined]
            aggs.append(d)
        yield aggs
    finally:
        for d in aggs:
            d.stop(grace=0)


def names(agg: AggregatorDaemon) -> list[str]:
    with FleetClient(agg.address) as client:  # type: ignore[attr-defined]
        return [n.name for n in client.list_nodes()]


def stored_keys(e: Etcd, prefix: str) -> list[str]:
    host, port = e.endpoint.rsplit(":", 1)
    client = Etcd3Client(host=host, port=int(port), api_path="/v3/")
    return sorted(meta["key"].decode() for _value, meta in client.get_prefix(prefix))


def test_registered_through_one_replica_validated_through_the_other_and_lapses_everywhere(
    etcd: Etcd, tmp_path  # noqa: F811
) -> None:
    prefix = f"/t-{uuid.uuid4().hex}/"
    with replicas(etcd.url, prefix) as (a, b):
        node = start_node(tmp_path, "edge1", "plain-vm",
                          args=["--register", a.address, "--labels", "site=edge"])  # type: ignore[attr-defined]
        try:
            wait_for("edge1 listed through the other replica", lambda: names(b) == ["edge1"])
            with FleetClient(b.address) as client:  # type: ignore[attr-defined]
                entry: NodeEntry = client.list_nodes()[0]
                assert (entry.source, entry.labels, entry.address) == ("registered", {"site": "edge"}, node.address)
                answer = client.validate(spec_text=SPEC_ANY, timeout=10)
                assert [(v.name, v.status, v.compatible) for v in answer.nodes] == [("edge1", "OK", True)]
            assert stored_keys(etcd, prefix) == [f"{prefix}addresses/{node.address}", f"{prefix}nodes/edge1"]
            node.kill()  # SIGKILL: no deregistration; only the etcd lease lapsing removes it
            wait_for("edge1 gone from etcd", lambda: stored_keys(etcd, prefix) == [])
            wait_for("edge1 gone from both replicas", lambda: names(a) == [] and names(b) == [])
        finally:
            node.kill()


def test_an_address_claimed_through_two_replicas_at_once_goes_to_one(etcd: Etcd) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex}/"
    with replicas(etcd.url, prefix, lease_ttl=30.0) as aggs:
        channels = [grpc.insecure_channel(d.address) for d in aggs]  # type: ignore[attr-defined]
        stubs = [fleet_pb2_grpc.FleetServiceStub(c) for c in channels]
        try:
            for round_ in range(5):
                address = f"127.0.0.1:{free_port()}"
                barrier = threading.Barrier(2)
                codes: dict[str, grpc.StatusCode] = {}

                def claim(i: int, address: str = address, barrier: threading.Barrier = barrier,
                          codes: dict[str, grpc.StatusCode] = codes, round_: int = round_) -> None:
                    name = f"n{round_}-{i}"
                    barrier.wait(10)
                    try:
                        stubs[i].RegisterNode(fleet_pb2.RegisterNodeRequest(name=name, address=address), timeout=10)
                        codes[name] = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        codes[name] = exc.code()
                        assert "held by registered node" in (exc.details() or "")

                threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(20)
                assert sorted(c.name for c in codes.values()) == ["ALREADY_EXISTS", "OK"], codes
                winner = next(n for n, c in codes.items() if c == grpc.StatusCode.OK)
                for d in aggs:  # both replicas list the winner at that address, and only it
                    wait_for(f"{winner} on every replica", lambda d=d, w=winner: w in names(d))
                    with FleetClient(d.address) as client:  # type: ignore[attr-defined]
                        assert [n.name for n in client.list_nodes() if n.address == address] == [winner]
        finally:
            for c in channels:
                c.close()


def test_deregistration_through_one_replica_leaves_the_other_and_frees_the_address(etcd: Etcd) -> None:  # noqa: F811
    prefix = f"/t-{uuid.uuid4().hex}/"
    with replicas(etcd.url, prefix, lease_ttl=600.0) as (a, b):
        address = f"127.0.0.1:{free_port()}"
        key = [(LEASE_KEY_METADATA, "k" * 64)]
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:  # type: ignore[attr-defined]
            sa, sb = fleet_pb2_grpc.FleetServiceStub(ca), fleet_pb2_grpc.FleetServiceStub(cb)
            sa.RegisterNode(fleet_pb2.RegisterNodeRequest(name="x", address=address), timeout=10, metadata=key)
            wait_for("x on replica b", lambda: names(b) == ["x"])
            with pytest.raises(grpc.RpcError) as err:  # b refuses another name at x's address
                sb.RegisterNode(fleet_pb2.RegisterNodeRequest(name="y", address=address), timeout=10)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            sa.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="x"), timeout=10, metadata=key)
            wait_for("x gone from replica b", lambda: names(b) == [])
            sb.RegisterNode(fleet_pb2.RegisterNodeRequest(name="y", address=address), timeout=10)
            wait_for("y on replica a", lambda: names(a) == ["y"])
            assert stored_keys(etcd, prefix) == [f"{prefix}addresses/{address}", f"{prefix}nodes/y"]


def test_registrations_fail_unavailable_while_etcd_is_down_and_resume_when_it_returns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = start_etcd(tmp_path)  # its own etcd: this test kills it
    try:
        with replicas(e.url, "/outage/", lease_ttl=600.0) as (a, b), grpc.insecure_channel(a.address) as ca:  # type: ignore[attr-defined]
            sa = fleet_pb2_grpc.FleetServiceStub(ca)
            sa.RegisterNode(fleet_pb2.RegisterNodeRequest(name="before", address="127.0.0.1:1"), timeout=10)
            wait_for("before on replica b", lambda: names(b) == ["before"])
            stop_process(e.proc, 5.0)
            with pytest.raises(grpc.RpcError) as err:
                sa.RegisterNode(fleet_pb2.RegisterNodeRequest(name="during", address="127.0.0.1:2"), timeout=20)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "etcd" in (err.value.details() or "")
            assert names(a) == ["before"] and names(b) == ["before"]  # both still answer from what they hold
            e = start_etcd(tmp_path, ports=(int(e.endpoint.rsplit(":", 1)[1]), e.peer_port))
            wait_for("registration accepted again", lambda: _registers(sa, "after", "127.0.0.1:3"))
            wait_for("after on replica b (its watch reconnected)", lambda: names(b) == ["after", "before"])
    finally:
        stop_process(e.proc, 5.0)


def _registers(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str) -> bool:
    try:
        stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name=name, address=address), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        return False
    return True


def test_store_urls() -> None:
    assert open_registration_store("") is None
    assert parse_store_url("etcd://10.0.0.1:2379,[::1]:2380") == [("10.0.0.1", 2379), ("::1", 2380)]
    for bad in ("redis://x:1", "etcd://nohostport"):
        with pytest.raises(ValueError, match="--store"):
            open_registration_store(bad)
