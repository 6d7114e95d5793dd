"""RegisterNode through a real in-process aggregator on a loopback port: refused addresses (wildcards,
addresses another node holds) and the registration cap come back as the right gRPC status with a message
naming the cause, and a long-running aggregator forgets the channels and contacts of departed nodes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port
from support_fleet import aggregator, write_nodes_file

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

CLI = [sys.executable, "-m", "nodecompat.clients.cli"]
OPEN = RegistrationPolicy(allow_unauthenticated=True)  # these tests are about addresses and caps, not identity
AggStub = tuple[AggregatorDaemon, fleet_pb2_grpc.FleetServiceStub]


def register(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str, **labels: str) -> float:
    req = fleet_pb2.RegisterNodeRequest(name=name, address=address, labels=labels)
    return float(stub.RegisterNode(req, timeout=5).ttl_seconds)


def refusal(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        register(stub, name, address)
    return err.value


@pytest.fixture
def agg_stub(tmp_path: Path) -> Iterator[AggStub]:
    nodes = write_nodes_file(tmp_path / "nodes.json", [], extra=[{"name": "pinned", "address": "127.0.0.1:1"}])
    with aggregator(nodes_file=str(nodes), max_registrations=3, registration=OPEN) as agg:
        channel = grpc.insecure_channel(agg.address)
        try:
            yield agg, fleet_pb2_grpc.FleetServiceStub(channel)
        finally:
            channel.close()


def test_wildcard_addresses_are_refused(agg_stub: AggStub) -> None:
    _agg, stub = agg_stub
    for address in ("0.0.0.0:50051", "[::]:50051"):
        err = refusal(stub, "edge", address)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, address
        assert f"'{address}' has a wildcard host" in (err.details() or "") and "--advertise" in (err.details() or "")
    err = refusal(stub, "edge", ":50051")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty host" in (err.details() or "")


def test_an_address_held_by_another_node_is_already_exists(agg_stub: AggStub) -> None:
    agg, stub = agg_stub
    register(stub, "a", "127.0.0.1:2")
    err = refusal(stub, "b", "127.0.0.1:2")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "held by registered node 'a'" in (err.details() or "")
    err = refusal(stub, "b", "127.0.0.1:1")
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "node 'pinned' in the nodes file" in (err.details() or "")
    stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="a"), timeout=5)
    register(stub, "b", "127.0.0.1:2")
    names = {n.name: n.source for n in agg.inventory.nodes()}
    assert names == {"pinned": "file", "b": "registered"}  # every node accounted for


def test_registrations_past_the_cap_are_resource_exhausted(agg_stub: AggStub) -> None:
    _agg, stub = agg_stub
    for i in range(3):
        register(stub, f"n{i}", f"127.0.0.1:{10 + i}")
    err = refusal(stub, "n3", "127.0.0.1:13")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in (err.details() or "")
    register(stub, "n0", "127.0.0.1:10")  # renewals still work
    with pytest.raises(grpc.RpcError) as err_info:
        register(stub, "n0", "127.0.0.1:10", **{"k": "v" * 1000})
    assert err_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_departed_nodes_lose_their_channels_and_contacts(tmp_path: Path) -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    entries: list[dict[str, object]] = [{"name": f"d{i}", "address": a} for i, a in enumerate(dead)]
    path = write_nodes_file(tmp_path / "nodes.json", [], extra=entries)
    with aggregator(nodes_file=str(path), registration=OPEN) as agg, FleetClient(agg.address) as client:
        stub = fleet_pb2_grpc.FleetServiceStub(client.channel)
        register(stub, "edge", f"127.0.0.1:{free_port()}")
        assert {n.health for n in client.list_nodes()} == {"UNAVAILABLE"}  # health checks opened channels
        answer = client.validate(spec_text="version: v1alpha1\ncompatibilities: []\n", timeout=5)
        assert len(answer.nodes) == 4
        assert len(agg.pool) == 4 and agg.inventory.contacts() == 4
        write_nodes_file(path, [], extra=[{"name": "d0", "address": dead[0]}])
        stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="edge"), timeout=5)
        assert [n.name for n in client.list_nodes()] == ["d0"]
        assert agg.pool.addresses() == {dead[0]} and agg.inventory.contacts() == 1
        write_nodes_file(path, [])
        assert client.validate(spec_text="version: v1alpha1\ncompatibilities: []\n", timeout=5).nodes == []
        assert len(agg.pool) == 0 and agg.inventory.contacts() == 0


def test_fleet_validate_names_an_unreadable_spec_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(range(256)))
    r = subprocess.run(
        [*CLI, "fleet", "validate", "--aggregator", f"127.0.0.1:{free_port()}", "--spec", str(garbage)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert f"--spec {garbage} is not UTF-8 text" in r.stderr
