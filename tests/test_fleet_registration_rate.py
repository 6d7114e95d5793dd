"""Lease TTLs scaled by the number of leases and the rate of new registrations (server/inventory/fleet_leases.py
grant_ttl, `aggregator --max-heartbeats-per-second`), as Nomad scales its heartbeat TTL (nomad/heartbeat.go:
RateScaledInterval) and lengthens it after a leader change (initializeHeartbeatTimers: the failover TTL).

A real in-process aggregator on a loopback port and real gRPC clients: with a rate of R heartbeats a second, no
registration in the last second and N leases held, RegisterNodeResponse.ttl_seconds is 3 * N / R (a LeaseKeeper
beats every ttl/3, so N leases send R beats a second together), never below the aggregator's lease nor a lease
asked for, never above MAX_SCALED_TTL, and rate 0 keeps the unscaled grant. During a registration burst the
registrations count against R: a burst of nodes renewing as LeaseKeeper does (every granted ttl/3) sends no more
renewals while it lasts than the few leases granted before the burst's rate was seen, and once the fleet is
registered all of them together send at most R RegisterNode a second. A real LeaseKeeper follows the granted lease:
it beats every granted ttl/3. The lease table's clock is the test's (inventory._clock): moved on past the rate's
one-second window where no burst is meant, or stepped by hand (the burst: no real second passes, nothing is timed).
The random stagger is turned off (inventory.ttl_stagger = 0) where figures are compared exactly, and checked on its
own."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterator

import grpc
import pytest
from support_daemon import free_port
from support_fleet import aggregator, wait_until

from nodecompat.clients.cli import build_parser
from nodecompat.clients.cmd_aggregator import build_config
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.fleet_leases import (
    BURST_TTL_SPREAD,
    DEFAULT_MAX_HEARTBEATS_PER_SECOND,
    MAX_SCALED_TTL,
)
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.inventory.registration_rate import RATE_WINDOW
from nodecompat.server.node.registration import LeaseKeeper
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
LEASE_TTL = 3.0  # the unscaled lease: scaling shows from the third lease on at 2 beats a second


class Clock:
    """The lease table's clock: time.monotonic() moved on by `ahead` s (pass() moves it past the registration rate's
    window: what came before is no burst)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def pass_window(self) -> None:
        self.ahead += 2 * RATE_WINDOW


def _register(stub: fleet_pb2_grpc.FleetServiceStub, i: int, ttl: float = 0.0) -> float:
    req = fleet_pb2.RegisterNodeRequest(name=f"n{i}", address=f"127.0.0.1:{20000 + i}", ttl_seconds=ttl)
    return float(stub.RegisterNode(req, timeout=5).ttl_seconds)


@pytest.fixture
def rated() -> Iterator[tuple[AggregatorDaemon, fleet_pb2_grpc.FleetServiceStub, Clock]]:
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=2.0, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        agg.inventory.ttl_stagger = 0.0  # exact figures
        clock = agg.inventory._clock = Clock()
        yield agg, fleet_pb2_grpc.FleetServiceStub(ch), clock


def test_the_granted_lease_grows_as_three_leases_per_allowed_beat() -> None:
    """Registrations a window apart (no burst): the grant is Nomad's, 3 * leases / rate."""
    with aggregator(lease_ttl=30.0, max_heartbeats_per_second=0.2, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        agg.inventory.ttl_stagger = 0.0
        clock = agg.inventory._clock = Clock()
        n = 10
        grants = []
        for i in range(n):  # (20 s on the lease table's clock in all: no 30 s lease lapses)
            grants.append(_register(stub, i))
            clock.pass_window()
        # a new node's first grant counts the leases held before it: max(30 s, 3 * i / 0.2)
        assert grants == [max(30.0, 15.0 * i) for i in range(n)]
        # renewals count all n: 0.2 beats a second together, each node beating every ttl/3
        assert [_register(stub, i) for i in range(n)] == [15.0 * n] * n
        assert _register(stub, 0, ttl=200.0) == 200.0  # a longer lease asked for is granted as before
        assert _register(stub, 0, ttl=40.0) == 15.0 * n  # a shorter one is lengthened to keep the rate


def test_a_registration_burst_stays_within_the_heartbeat_budget() -> None:
    """60 nodes registering 10 a second (a burst: 5 times the 2 RegisterNode a second allowed), each renewing every
    granted ttl/3 as LeaseKeeper does, on a clock stepped from call to call. The registrations alone take the
    budget, so the burst's leases have no renewal due while it lasts: only the leases granted before the rate
    was seen (at most 2 a second over RATE_WINDOW) renew in it, once each. Counting only the leases held when
    granted, the first registrants got the lease of a small fleet and renewed again and again while the burst
    grew it (10 renewals in these 6 s). Once every burst lease has been renewed (the longest, MAX_SCALED_TTL,
    after MAX_SCALED_TTL/3), all 60 together send at most 2 a second (each node's last partial beat aside)."""
    rate, n, every = 2.0, 60, 0.1
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=rate, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        start = time.monotonic()
        now = [start]
        agg.inventory._clock = lambda: now[0]
        burst_end = (n - 1) * every
        rest = burst_end + MAX_SCALED_TTL / 3 + 1.0  # every burst lease renewed once
        end = rest + 300.0
        due = [(i * every, i) for i in range(n)]  # (when, node) on the test's clock
        calls: list[tuple[float, bool]] = []  # (when, a renewal)
        grants: dict[int, float] = {}
        while due and due[0][0] <= end:
            when, i = heapq.heappop(due)
            now[0] = start + when
            calls.append((when, i in grants))
            grants[i] = ttl = _register(stub, i)
            heapq.heappush(due, (when + ttl / 3, i))
        in_burst = [w for w, renewal in calls if renewal and w <= burst_end]
        assert len(in_burst) <= rate * RATE_WINDOW, in_burst
        at_rest = [w for w, renewal in calls if renewal and rest <= w <= end]
        assert len(at_rest) <= rate * (end - rest) + n, len(at_rest)
        assert len(at_rest) >= n, len(at_rest)  # every node beats at rest (the fleet's lease: 3 * 60 / 2 = 90 s)


def test_a_burst_lease_is_spread_over_the_upper_half_of_the_cap(rated) -> None:  # type: ignore[no-untyped-def]
    """Registrations faster than the budget: each lease between BURST_TTL_SPREAD x MAX_SCALED_TTL and MAX_SCALED_TTL,
    spread out (the burst's first renewals do not come back as one burst)."""
    agg, stub, _clock = rated
    now = [time.monotonic()]
    agg.inventory._clock = lambda: now[0]  # no time passes: 20 registrations in no time
    granted = [_register(stub, i) for i in range(20)]
    assert granted[:2] == [LEASE_TTL, LEASE_TTL]  # before the rate is seen (1 in the last second: 3 * 1 / (2 - 1))
    assert all(MAX_SCALED_TTL * BURST_TTL_SPREAD <= t <= MAX_SCALED_TTL for t in granted[2:]), granted
    assert len(set(granted[2:])) > 1, granted
    assert _register(stub, 0, ttl=3000.0) == 3000.0  # a longer lease asked for is granted as before


def test_the_scaled_lease_is_capped_and_rate_zero_keeps_the_unscaled_grant() -> None:
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=0.01, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        agg.inventory.ttl_stagger = 0.0
        clock = agg.inventory._clock = Clock()
        grants = []
        for i in range(4):  # a window apart: no burst
            grants.append(_register(stub, i))
            clock.pass_window()
        # 3 * i / 0.01 = 300 s a lease held; the cap from the third node on
        assert grants == [LEASE_TTL, 300.0, MAX_SCALED_TTL, MAX_SCALED_TTL]
        assert _register(stub, 0, ttl=900.0) == 900.0  # an unscaled grant above the cap stays
    with aggregator(lease_ttl=LEASE_TTL, max_heartbeats_per_second=0, registration=OPEN,
                    check_new_nodes=False) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        assert [_register(stub, i) for i in range(20)] == [LEASE_TTL] * 20
        assert [_register(stub, i, ttl=7.0) for i in range(3)] == [7.0] * 3


def test_the_stagger_lengthens_scaled_leases_by_up_to_a_tenth_at_random(rated) -> None:  # type: ignore[no-untyped-def]
    agg, stub, clock = rated
    agg.inventory.ttl_stagger = 0.1
    n = 20
    for i in range(n):
        _register(stub, i)
    clock.pass_window()  # the registrations were a burst; the renewals come after it
    granted = [_register(stub, i) for i in range(n)]
    assert all(3 * n / 2 <= t <= 3 * n / 2 * 1.1 for t in granted), granted
    assert len(set(granted)) > 1, granted  # spread out, not one synchronized lease


def test_a_lease_keeper_beats_every_granted_ttl_over_three(rated) -> None:  # type: ignore[no-untyped-def]
    """Unscaled, a 0.6 s lease would make the keeper beat every 0.2 s (~15 beats in 3 s); with 2 other leases
    held at 2 beats a second it is granted 4.5 s and beats every 1.5 s. The beats are counted where they land:
    each renewal moves the lease's expiry in the aggregator."""
    agg, stub, clock = rated
    agg.inventory.lease_ttl = 0.6
    for i in range(2):
        _register(stub, i, ttl=600.0)
    clock.pass_window()  # no burst: the keeper's own registration is the only new one
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


def test_one_name_churned_does_not_lengthen_other_leases(rated) -> None:  # type: ignore[no-untyped-def]
    """A registrant holding one name at most, registering and deregistering it faster than the budget (real
    RegisterNode/DeregisterNode calls): every registration is a new one, but the fleet does not grow. The other
    nodes' renewals are granted at most twice their lease (3 * leases / (R / 2)), not a burst lease of 300-600 s:
    before, a single name churned this way kept every renewal at 300-600 s for as long as it went on, whatever
    --max-registrations (review9)."""
    agg, stub, clock = rated
    n = 10
    for i in range(n):
        _register(stub, i)
    clock.pass_window()
    quiet = _register(stub, 0)
    assert quiet == 3 * n / 2  # Nomad's rule: 15 s
    now = [clock()]
    agg.inventory._clock = lambda: now[0]  # no time passes: the churn is all in the rate's window
    churn = fleet_pb2.RegisterNodeRequest(name="churn", address="127.0.0.1:29999")
    for _ in range(10):
        stub.RegisterNode(churn, timeout=5)
        stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="churn"), timeout=5)
        assert agg.inventory.registrations() == n
    renewals = [_register(stub, i) for i in range(n)]
    assert all(quiet <= t <= 2 * quiet for t in renewals), renewals
    # a new registration during the churn still gets the burst lease (a burst's leases fit the fleet it builds)
    assert MAX_SCALED_TTL * BURST_TTL_SPREAD <= _register(stub, n) <= MAX_SCALED_TTL
