"""New registrations count against `--max-heartbeats-per-second` only once the shared store accepted them
(server/inventory/fleet_leases.py _register; grant_ttl counts new registrations a second, registration_rate.py).

A real in-process aggregator with `--store etcd://` on a real Debian etcd-server and real gRPC clients. A new name
whose claim the store refuses (its address is held in etcd by a name this replica has not seen: ALREADY_EXISTS from
the store's transaction) or cannot record (etcd killed: UNAVAILABLE) is no registration, so it must leave the
heartbeat budget to the renewals: before the fix each refused one was counted before the claim, and ten of them
in a second gave the next honest node the burst lease (300-600 s) instead of the aggregator's lease. Accepted
registrations still count (the same burst of accepted ones gives the burst lease). The lease table's clock is
frozen (inventory._clock), so the rate's one-second window holds every call whatever the machine's load; the
random stagger is off (exact figures)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from etcd3gw import Etcd3Client
from support_daemon import stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, etcd, start_etcd  # noqa: F401 (fixture)

from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.fleet_leases import BURST_TTL_SPREAD, MAX_SCALED_TTL
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
LEASE_TTL = 30.0  # s: the aggregator's lease, what a new node of a small fleet gets with no burst
RATE = 2.0  # RegisterNode a second allowed: ten new registrations in a second are a burst
REFUSED = 10


@contextlib.contextmanager
def rated_aggregator(e: Etcd, prefix: str) -> Iterator[tuple[AggregatorDaemon, fleet_pb2_grpc.FleetServiceStub]]:
    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=LEASE_TTL, max_heartbeats_per_second=RATE,
                                            registration=OPEN, sync=None, check_new_nodes=False, store=e.url,
                                            store_prefix=prefix, store_watch_read_timeout=WATCH_READ_TIMEOUT))
    port = agg.start()
    try:
        agg.inventory.ttl_stagger = 0.0
        frozen = time.monotonic()
        agg.inventory._clock = lambda: frozen  # every call in one rate window
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield agg, fleet_pb2_grpc.FleetServiceStub(ch)
    finally:
        agg.stop(grace=0)


def _register(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str) -> float:
    req = fleet_pb2.RegisterNodeRequest(name=name, address=address)
    return float(stub.RegisterNode(req, timeout=20).ttl_seconds)


def _refused(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _register(stub, name, address)
    return err.value


def test_registrations_the_store_refuses_do_not_use_the_heartbeat_budget(etcd: Etcd) -> None:  # noqa: F811
    prefix = f"/budget-{uuid.uuid4().hex}/"
    taken = "127.0.0.1:1"
    host, port = etcd.endpoint.rsplit(":", 1)
    # the address is held in etcd by a name no replica's watch applies (only nodes/ keys are watched): the
    # aggregator's own lease table lets the claim through, and etcd's transaction refuses it
    Etcd3Client(host=host, port=int(port), api_path="/v3/").put(f"{prefix}addresses/{taken}", "elsewhere")
    with rated_aggregator(etcd, prefix) as (_agg, stub):
        for i in range(REFUSED):
            err = _refused(stub, f"refused{i}", taken)
            assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
            assert "shared etcd store" in (err.details() or ""), err.details()
        # no registration was made: the next new node gets the aggregator's lease, not a burst's
        assert _register(stub, "honest", "127.0.0.1:2") == LEASE_TTL
        # accepted new registrations do count: a burst of them (5 in the window, over RATE) gets the burst lease
        for i in range(4):
            _register(stub, f"burst{i}", f"127.0.0.1:{10 + i}")
        assert MAX_SCALED_TTL * BURST_TTL_SPREAD <= _register(stub, "late", "127.0.0.1:3") <= MAX_SCALED_TTL


def test_registrations_etcd_could_not_record_do_not_use_the_heartbeat_budget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = start_etcd(tmp_path)  # its own etcd: this test kills it
    try:
        with rated_aggregator(e, "/budget-outage/") as (agg, stub):
            assert _register(stub, "before", "127.0.0.1:1") == LEASE_TTL
            stop_process(e.proc, 5.0)
            for i in range(REFUSED):
                err = _refused(stub, f"during{i}", f"127.0.0.1:{100 + i}")
                assert err.code() == grpc.StatusCode.UNAVAILABLE and "etcd" in (err.details() or ""), err
            e = start_etcd(tmp_path, ports=(int(e.endpoint.rsplit(":", 1)[1]), e.peer_port))
            deadline = time.monotonic() + 30
            while True:  # the first call after the restart may still meet the old connection's refusal
                try:
                    granted = _register(stub, "after", "127.0.0.1:2")
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc
                    time.sleep(0.2)
            # one registration accepted in the window ("before"; "after" counts the lease held): no burst
            assert granted == LEASE_TTL, (granted, agg.inventory._new_rate.per_second(agg.inventory._clock()))
    finally:
        stop_process(e.proc, 5.0)
