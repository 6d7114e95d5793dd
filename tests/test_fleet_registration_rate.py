"""Lease TTLs scaled by the number of leases (server/inventory/fleet_leases.py grant_ttl, `aggregator
--max-heartbeats-per-second`), as Nomad scales its heartbeat TTL (nomad/heartbeat.go: RateScaledInterval).

A real in-process aggregator on a loopback port and real gRPC clients: with a rate of 2 heartbeats a second and
N leases held, RegisterNodeResponse.ttl_seconds is 3 * N / 2 (a LeaseKeeper beats every ttl/3, so N leases send
2 beats a second together), never below the aggregator's lease nor a lease asked for, never above MAX_SCALED_TTL,
and rate 0 keeps the unscaled grant. A real LeaseKeeper follows the granted lease: it beats every granted ttl/3,
so the aggregator sees far fewer renewals than the unscaled lease would send. The random stagger is turned off
(inventory.ttl_stagger = 0) where figures are compared exactly, and checked on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from support_daemon import free_port
from support_fleet import aggregator, wait_until

from nodecompat.clients.cli import build_parser
from nodecompat.clients.cmd_aggregator import build_config
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.fleet_leases import DEFAULT_MAX_HEARTBEATS_PER_SECOND, MAX_SCALED_TTL
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.node.registration import LeaseKeeper
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
LEASE_TTL = 3.0  # the unscaled lease: scaling shows from the third lease on at 2 beats a second


def _register(stub: fleet_pb2_grpc.FleetServiceStub, i: int, ttl: float = 0.0) -> float:
    req = fleet_pb2.RegisterNodeRequest(name=f"n{i}", address=f"127.0.0.1:{20000 + i}", ttl_seconds=ttl)
    return float(stub.RegisterNode(req, timeout=5).ttl_seconds)


@pytest.fixture
def rated() -> Iterator[tuple[AggregatorDaemon, fleet_pb2_grpc.FleetServiceStub]]:
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=2.0, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        agg.inventory.ttl_stagger = 0.0  # exact figures
        yield agg, fleet_pb2_grpc.FleetServiceStub(ch)


def test_the_granted_lease_grows_as_three_leases_per_allowed_beat(rated) -> None:  # type: ignore[no-untyped-def]
    _agg, stub = rated
    n = 10
    # a new node's first grant counts the leases held before it: max(3 s, 3 * i / 2)
    assert [_register(stub, i) for i in range(n)] == [max(LEASE_TTL, 3 * i / 2) for i in range(n)]
    # renewals count all n: 2 beats a second together, each node beating every ttl/3
    assert [_register(stub, i) for i in range(n)] == [3 * n / 2] * n
    assert _register(stub, 0, ttl=40.0) == 40.0  # a longer lease asked for is granted as before
    assert _register(stub, 0, ttl=5.0) == 3 * n / 2  # a shorter one is lengthened to keep the rate


def test_the_scaled_lease_is_capped_and_rate_zero_keeps_the_unscaled_grant() -> None:
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=0.01, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        agg.inventory.ttl_stagger = 0.0
        # 3 * i / 0.01 = 300 s a lease held; the cap from the third node on
        assert [_register(stub, i) for i in range(4)] == [LEASE_TTL, 300.0, MAX_SCALED_TTL, MAX_SCALED_TTL]
        assert _register(stub, 0, ttl=900.0) == 900.0  # an unscaled grant above the cap stays
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=0, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        assert [_register(stub, i) for i in range(20)] == [LEASE_TTL] * 20
        assert [_register(stub, i, ttl=7.0) for i in range(3)] == [7.0] * 3


def test_the_stagger_lengthens_scaled_leases_by_up_to_a_tenth_at_random(rated) -> None:  # type: ignore[no-untyped-def]
    agg, stub = rated
    agg.inventory.ttl_stagger = 0.1
    n = 20
    for i in range(n):
        _register(stub, i)
    granted = [_register(stub, i) for i in range(n)]
    assert all(3 * n / 2 <= t <= 3 * n / 2 * 1.1 for t in granted), granted
    assert len(set(granted)) > 1, granted  # spread out, not one synchronized lease


def test_a_lease_keeper_beats_every_granted_ttl_over_three(rated) -> None:  # type: ignore[no-untyped-def]
    """Unscaled, a 0.6 s lease would make the keeper beat every 0.2 s (~15 beats in 3 s); with 2 other leases
    held at 2 beats a second it is granted 4.5 s and beats every 1.5 s. The beats are counted where they land:
    each renewal moves the lease's expiry in the aggregator."""
    agg, stub = rated
    agg.inventory.lease_ttl = 0.6
    for i in range(2):
        _register(stub, i, ttl=600.0)
    keeper = LeaseKeeper(agg.address, name="edge", address=f"127.0.0.1:{free_port()}")
    keeper.start()
    try:
        wait_until(lambda: keeper.granted_ttl == 4.5, timeout=30, what="the renewal's grant counting all 3 leases")
        assert keeper.interval() == 4.5 / 3
        lease = agg.inventory._leases["edge"]
        beats, last, end = 0, lease.expires, time.monotonic() + 3.0
        while time.monotonic() < end:
            if lease.expires != last:
                beats, last = beats + 1, lease.expires
            time.sleep(0.02)
        assert beats <= 3, beats  # every 1.5 s: 2 or 3 in 3 s (beats are only ever late); unscaled (0.2 s): ~15
        wait_until(lambda: lease.expires != last, timeout=30, what="the next beat")
    finally:
        keeper.stop()


def test_the_flag_sets_the_rate_and_is_checked() -> None:
    parser = build_parser()
    default = build_config(parser.parse_args(["aggregator"]))
    assert default.max_heartbeats_per_second == DEFAULT_MAX_HEARTBEATS_PER_SECOND
    config = build_config(parser.parse_args(["aggregator", "--max-heartbeats-per-second", "0"]))
    assert config.max_heartbeats_per_second == 0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="--max-heartbeats-per-second"):
            build_config(parser.parse_args(["aggregator", "--max-heartbeats-per-second", bad]))
