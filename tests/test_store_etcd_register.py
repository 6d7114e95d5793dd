"""`nodecompat serve --register` with several aggregator addresses (issue 14: replicas sharing registrations
through etcd; server/node/registration.py): comma-separated and repeated forms, an unreachable first address
skipped, heartbeats to the first reachable replica, and failover to the next one when it dies, without the
node ever leaving the fleet as the surviving replica sees it."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest
from support_daemon import free_port
from support_etcd import WATCH_READ_TIMEOUT, Etcd, etcd, wait_for  # noqa: F401 (fixture)
from support_fleet import start_node

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.node.registration import LeaseKeeper, parse_aggregators

OPEN = RegistrationPolicy(allow_unauthenticated=True)
TTL = 3.0  # seconds: the aggregators' default lease; the daemon renews every TTL/3


def test_aggregator_lists() -> None:
    assert parse_aggregators(["a:1,b:2", "c:3", " a:1 "]) == ["a:1", "b:2", "c:3"]
    assert parse_aggregators("a:1") == ["a:1"]
    for bad in ([], [","], [",".join(f"h:{i}" for i in range(1, 18))]):
        with pytest.raises(ValueError):
            parse_aggregators(bad)


def test_a_refusal_is_not_failed_over(etcd: Etcd) -> None:  # noqa: F811
    """ALREADY_EXISTS from one replica is the fleet's answer (shared store): the next is not asked."""
    prefix = f"/reg-{uuid.uuid4().hex}/"
    a = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=60, registration=OPEN, sync=None,
                                          store=etcd.url, store_prefix=prefix,
                                          store_watch_read_timeout=WATCH_READ_TIMEOUT))
    a_addr = f"127.0.0.1:{a.start()}"
    taken = f"127.0.0.1:{free_port()}"
    holder = LeaseKeeper(a_addr, name="holder", address=taken)
    other = LeaseKeeper([a_addr, f"127.0.0.1:{free_port()}"], name="other", address=taken)
    try:
        assert holder.heartbeat()
        assert not other.heartbeat()
        assert other.last_error.startswith("ALREADY_EXISTS") and other.aggregator == a_addr
    finally:
        holder.stop()
        other.stop()
        a.stop(grace=0)


def test_serve_register_fails_over_between_replicas(etcd: Etcd, tmp_path) -> None:  # noqa: F811
    prefix = f"/reg-{uuid.uuid4().hex}/"
    aggs = [AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=TTL, registration=OPEN, sync=None,
                                              store=etcd.url, store_prefix=prefix,
                                              store_watch_read_timeout=WATCH_READ_TIMEOUT)) for _ in range(2)]
    a_addr, b_addr = (f"127.0.0.1:{d.start()}" for d in aggs)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    node = None
    try:
        node = start_node(tmp_path, "edge1", "plain-vm",
                          args=["--register", f"{dead},{a_addr}", "--register", b_addr])

        def names(address: str) -> set[str]:
            with FleetClient(address) as client:
                return {n.name for n in client.list_nodes(timeout=5)}

        # the daemon logs its registration once A's answer is back, which may be after B already lists it
        wait_for("edge1 registered (through A: the first reachable) and seen by B",
                 lambda: names(b_addr) == {"edge1"} and "registered with " in node.log.read_text())
        log = node.log.read_text()
        assert f"registered with {a_addr} as edge1" in log and f"registered with {b_addr}" not in log, log[-3000:]

        missing: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.2):
                try:
                    got = names(b_addr)
                except grpc.RpcError as exc:
                    missing.append(exc.code().name)
                    continue
                if got != {"edge1"}:
                    missing.append(str(sorted(got)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            aggs[0].stop(grace=0)  # replica A goes away; its etcd leases lapse within TTL unless renewed elsewhere
            failed_over = f"registered with {b_addr} as edge1"
            wait_for("the daemon failing over to B", lambda: failed_over in node.log.read_text(), 10 * TTL)
            time.sleep(3 * TTL)  # three leases through B alone
        finally:
            stop.set()
            watcher.join(10)
        assert not missing, missing[:5]
        assert names(b_addr) == {"edge1"}
    finally:
        if node is not None:
            node.kill()
        for d in aggs:
            d.stop(grace=0)
