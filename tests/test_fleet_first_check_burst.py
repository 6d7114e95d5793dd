"""The first health checks wait while a registration burst lasts, for a bounded time (server/inventory/first_check.py,
issue 12: every daemon re-registering after an aggregator restart). A registered address nobody can reach is still
seen UNAVAILABLE while the burst goes on: the wait is bounded by max_defer in all between two empty backlogs."""

from __future__ import annotations

import threading

import grpc
from support_daemon import free_port
from support_fleet import aggregator, wait_until

from nodecompat.server.inventory.first_check import FirstHealthChecks
from nodecompat.server.inventory.fleet_nodes import NodeInventory
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)


def test_a_burst_defers_the_checks_for_at_most_max_defer_then_they_run_until_none_is_left() -> None:
    inv = NodeInventory()  # a real lease table; the checks' clock is the test's (seconds, moved by hand)
    now = [0.0]
    checked: list[list[str]] = []

    def check(addresses: list[str], timeout: float) -> None:
        checked.append(addresses)
        for a in addresses:
            inv.record_contact(a, "UNAVAILABLE")

    first = FirstHealthChecks(inv, check, batch=5, burst_rate=10.0, max_defer=3.0, clock=lambda: now[0])
    count = [0]

    def register(k: int) -> None:  # k new nodes (each one lease put)
        for _ in range(k):
            inv.register(f"n{count[0]:03d}", f"127.0.0.1:{20000 + count[0]}", {}, 0.0)
            count[0] += 1

    def round_after(seconds: float, new: int) -> int:
        register(new)
        now[0] += seconds
        return first.run_once()

    assert first.run_once() == 0  # nothing registered yet
    # 20 registrations a second (over 10/s): a burst; the checks wait (and do not even list the unchecked)
    assert [round_after(1.0, 20) for _ in range(3)] == [0, 0, 0] and checked == [] and first.deferred == 3
    # 3 s waited in all: the checks run every round although the burst goes on, a batch at a time
    assert round_after(1.0, 20) == 5 and round_after(1.0, 20) == 5 and first.deferred == 3
    # registrations slower than the burst rate: checked as before, until none is left
    assert round_after(1.0, 1) == 5
    while round_after(1.0, 0):
        pass
    assert sum(map(len, checked)) == count[0] and [v.health for v in inv.views()] == ["UNAVAILABLE"] * count[0]
    # the backlog was empty: a new burst may defer the checks again
    assert round_after(1.0, 20) == 0 and first.deferred == 4
    # renewals count as registrations (an aggregator restarted with a snapshot: every lease renewed at once)
    for i in range(30):
        inv.register(f"n{i:03d}", f"127.0.0.1:{20000 + i}", {}, 0.0)
    now[0] += 1.0
    assert first.run_once() == 0 and first.deferred == 5


def test_new_leases_coming_fast_are_a_burst_at_any_call_rate_and_a_small_backlog_is_checked_at_once() -> None:
    """A restart without a snapshot on a loaded machine: every registration is a new lease, at a rate under the
    steady heartbeat rate (here burst_rate is off: only new_rate counts)."""
    inv = NodeInventory()
    now = [0.0]
    checked: list[str] = []
    first = FirstHealthChecks(inv, lambda addresses, timeout: checked.extend(addresses), burst_rate=0.0,
                              new_rate=10.0, clock=lambda: now[0])
    first.run_once()
    for i in range(12):  # 12 new leases in 1 s (over 10/s) but only 12 unchecked (min_backlog 16): checked
        inv.register(f"a{i:02d}", f"127.0.0.1:{21000 + i}", {}, 0.0)
    now[0] += 1.0
    assert first.run_once() == 12 and first.deferred == 0
    for i in range(12):  # renewals are no new leases: no burst
        inv.register(f"a{i:02d}", f"127.0.0.1:{21000 + i}", {}, 0.0)
    now[0] += 1.0
    assert first.run_once() == 12 and first.deferred == 0
    for i in range(12, 32):  # 20 new leases in 1 s and 32 unchecked: a burst
        inv.register(f"a{i:02d}", f"127.0.0.1:{21000 + i}", {}, 0.0)
    now[0] += 1.0
    assert first.run_once() == 0 and first.deferred == 1


def test_a_slow_trickle_of_registrations_is_checked_at_once() -> None:
    inv = NodeInventory(max_heartbeats_per_second=2.0)  # the default burst rate: at least batch / interval
    now = [0.0]
    checked: list[str] = []
    first = FirstHealthChecks(inv, lambda addresses, timeout: checked.extend(addresses), clock=lambda: now[0])
    assert first.burst_rate == 64 / 0.5
    first.run_once()
    for i in range(3):
        inv.register(f"n{i}", f"127.0.0.1:{20000 + i}", {}, 0.0)
        now[0] += 0.5
        first.run_once()
    assert checked == ["127.0.0.1:20000", "127.0.0.1:20000", "127.0.0.1:20001", "127.0.0.1:20000",
                       "127.0.0.1:20001", "127.0.0.1:20002"] and first.deferred == 0  # UNKNOWN until recorded


def test_an_unreachable_registered_node_is_seen_unavailable_while_the_burst_goes_on() -> None:
    """A real aggregator and real RegisterNode calls, renewed in a tight loop for as long as the test waits (a burst
    that does not end); the nodes' addresses listen nowhere."""
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    stop = threading.Event()
    with aggregator(registration=OPEN) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        agg.first_checks.burst_rate = 5.0  # RegisterNode a second: the loop below is far over it
        agg.first_checks.max_defer = 2.0
        agg.first_checks.min_backlog = 0  # (3 nodes: by default a backlog of up to 16 is checked at once)
        stub = fleet_pb2_grpc.FleetServiceStub(ch)

        def burst() -> None:
            while not stop.is_set():
                for i, address in enumerate(addresses):
                    stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name=f"gone-{i}", address=address), timeout=10)

        thread = threading.Thread(target=burst, daemon=True)
        thread.start()
        try:
            wait_until(lambda: agg.first_checks.deferred > 0, 60, "the first checks waiting for the burst")
            wait_until(lambda: [v.health for v in agg.inventory.views()] == ["UNAVAILABLE"] * 3, 60,
                       "the unreachable nodes seen UNAVAILABLE during the burst")
            assert thread.is_alive()  # the burst was still going on
        finally:
            stop.set()
            thread.join(timeout=15)
