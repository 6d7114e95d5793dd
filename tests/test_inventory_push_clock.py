"""A registration's probe time is untrusted input (server/inventory/inventory_push.py, push model): a registrant (or a
daemon whose clock is wrong) announcing its node's real fingerprint with a probe time far in the future must
neither make the node's stored features look fresh forever (ValidateFleet's max_staleness would never ask
it live again, and `max` keeps the future time across later honest heartbeats) nor put an as_of the
clients cannot read into every answer (a Timestamp past year 9999: FleetClient and `fleet validate` failed
for the whole fleet). A real daemon on a fixture host, a hostile registrant announcing its fingerprint, a
real in-process aggregator."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_fleet import Proc, aggregator, first_watch_message, start_node

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

SPEC = Path(__file__).resolve().parents[1] / "examples" / "gpu-node.yaml"
YEAR_9999 = 253402300799  # the last second a google.protobuf.Timestamp may hold


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, str]]:
    """The daemon and its fingerprint, once for the module: the tests only read its features (each has its
    own aggregator, which is what a registration changes)."""
    proc = start_node(tmp_path_factory.mktemp("clock"), "clock-1", "plain-vm")
    try:
        yield proc, first_watch_message(proc.address).features.fingerprint
    finally:
        proc.kill()


@pytest.fixture()
def setup(node: tuple[Proc, str]) -> Iterator[tuple[AggregatorDaemon, Proc, str]]:
    with aggregator(lease_ttl=9.0, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        yield agg, node[0], node[1]


def _register(agg: AggregatorDaemon, node: Proc, fp: str, seconds: int) -> None:
    req = fleet_pb2.RegisterNodeRequest(name="clock-1", address=node.address, round_id=1, fingerprint=fp)
    req.probed_at.seconds = seconds
    with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
            req, timeout=10, metadata=[(LEASE_KEY_METADATA, _register.key)])  # type: ignore[attr-defined]


_register.key = secrets.token_hex(32)  # type: ignore[attr-defined]


def _in_inventory(agg: AggregatorDaemon, address: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        rec = agg.store.get(address) if agg.store is not None else None
        if rec is not None and rec.has_features and rec.state == "OK":
            return
        assert time.monotonic() < deadline, "the registered node never reached the inventory"
        time.sleep(0.05)


@pytest.mark.parametrize("claimed", [YEAR_9999, 1 << 62], ids=["year-9999", "past-timestamp-range"])
def test_a_probe_time_in_the_future_is_not_believed(setup: tuple[AggregatorDaemon, Proc, str], claimed: int) -> None:
    agg, node, fp = setup
    try:
        _register(agg, node, fp, int(time.time()))
        _in_inventory(agg, node.address)
        _register(agg, node, fp, claimed)  # the same features, "probed" in the far future
    except grpc.RpcError as exc:  # refusing a time no Timestamp can hold is an answer too
        assert claimed > YEAR_9999 and exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        return
    asked = time.time()
    with FleetClient(agg.address) as c:  # type: ignore[attr-defined]
        answer = c.validate(spec_text=SPEC.read_text(), timeout=20, max_staleness=60)
    [verdict] = answer.nodes
    assert verdict.as_of and verdict.as_of[:4] < "2100", verdict.as_of
    rec = agg.store.get(node.address)  # type: ignore[union-attr]
    assert rec is not None and rec.probed_at <= asked + 1, f"stored probe time {rec.probed_at} is in the future"
