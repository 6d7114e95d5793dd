"""Failover of aggregator replicas over a three-member etcd (issue 14, "What must hold"): two
`nodecompat aggregator --store etcd://m0,m1,m2` processes; real `nodecompat serve` daemons registered
through replica A (RegisterNode with the lease key a daemon sends, renewed every 0.5 s as `serve --register`
does) are listed and validated through replica B; killing the etcd leader (the first endpoint both replicas
use) changes nothing visible: every registration stays listed through B, renewals go on and a new
registration through A is accepted and reaches B; killing replica A (SIGKILL) loses no node from B's fleet
while the same registrants renew through B (server/inventory/store_etcd.py: a renewal through another replica moves
the keys onto its own lease); with every etcd member gone, B still answers ValidateFleet for the daemons and
refuses new registrations UNAVAILABLE naming etcd."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from support_daemon import free_port, stop_process
from support_etcd import Etcd, leader, start_etcd_cluster, wait_for
from support_fleet import FLEET, SPEC_ANY, Proc, start_aggregator_process, start_node

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

TTL = 5.0  # seconds: each registration's lease
RENEW_EVERY = 0.5  # seconds between renewals (the daemons' heartbeat is a third of the lease; here faster)
WINDOW = 6.0  # seconds each disruption is watched for: longer than one lease


class Registrants:
    """Registrations kept alive from a thread, as daemons with `serve --register` keep theirs: each name
    with its own lease key, renewed through `target` (switchable: a daemon re-registering elsewhere)."""

    def __init__(self, target: str) -> None:
        self.nodes: dict[str, str] = {}  # name -> address
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.target = target
        self.renewed: dict[str, int] = {}  # name -> successful renewals
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def register(self, name: str, address: str, target: str | None = None) -> None:
        """One registration now (through `target`, default the current one); raises the RpcError."""
        with self._lock:
            self._keys.setdefault(name, uuid.uuid4().hex * 2)
        self._register(target or self.target, name, address)
        with self._lock:
            self.nodes[name] = address

    def _register(self, target: str, name: str, address: str) -> None:
        with grpc.insecure_channel(target) as ch:
            fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
                fleet_pb2.RegisterNodeRequest(name=name, address=address, labels={"zone": "a"}, ttl_seconds=TTL),
                timeout=10, metadata=[(LEASE_KEY_METADATA, self._keys[name])])

    def _loop(self) -> None:
        while not self._stop.wait(RENEW_EVERY):
            with self._lock:
                todo, target = dict(self.nodes), self.target
            for name, address in todo.items():
                try:
                    self._register(target, name, address)
                    self.renewed[name] = self.renewed.get(name, 0) + 1
                except grpc.RpcError as exc:
                    self.failures.append(f"{name} via {target}: {exc.code().name} {exc.details()}")

    def switch(self, target: str) -> None:
        with self._lock:
            self.target = target

    def __enter__(self) -> Registrants:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def listed(agg: Proc) -> dict[str, str]:
    with FleetClient(agg.address) as client:
        return {n.name: n.address for n in client.list_nodes(timeout=5)}


def watch_fleet(agg: Proc, expected: dict[str, str], seconds: float) -> int:
    """List the fleet through `agg` for `seconds`; every answer must be exactly `expected`. Returns the
    number of answers checked."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        assert listed(agg) == expected, f"answer {n} after the disruption"
        n += 1
        time.sleep(0.1)
    return n


def validated(agg: Proc) -> list[tuple[str, str, bool]]:
    with FleetClient(agg.address) as client:
        answer = client.validate(spec_text=SPEC_ANY, timeout=20)
    return sorted((v.name, v.status, v.compatible) for v in answer.nodes)


@pytest.fixture
def cluster(tmp_path) -> Iterator[list[Etcd]]:  # type: ignore[no-untyped-def]
    members = start_etcd_cluster(tmp_path, 3)
    try:
        yield members
    finally:
        for e in members:
            stop_process(e.proc, 5.0)


def test_replicas_over_three_etcd_members_survive_an_etcd_member_and_a_replica(
    cluster: list[Etcd], tmp_path  # type: ignore[no-untyped-def]
) -> None:
    lead = leader(cluster)
    order = [cluster[lead]] + [e for i, e in enumerate(cluster) if i != lead]  # the leader first: both
    store = "etcd://" + ",".join(e.endpoint for e in order)  # replicas talk to it until it dies
    prefix = f"/failover-{uuid.uuid4().hex}/"
    daemons = [start_node(tmp_path, name, FLEET[name], wait=False) for name in ("h100", "vm")]
    procs: list[Proc] = list(daemons)
    try:
        for d in daemons:
            d.wait_serving()
        flags = ["--store", store, "--store-prefix", prefix, "--allow-unauthenticated-registration",
                 "--lease-ttl", str(TTL)]
        a = start_aggregator_process(tmp_path, *flags)
        procs.append(a)
        b = start_aggregator_process(tmp_path, *flags)
        procs.append(b)
        with Registrants(a.address) as reg:
            for d in daemons:
                reg.register(d.name, d.address)
            fleet = {d.name: d.address for d in daemons}
            wait_for("the daemons registered through A listed through B", lambda: listed(b) == fleet)
            assert validated(b) == [("h100", "OK", True), ("vm", "OK", True)]

            # One etcd member (the raft leader, and the endpoint both replicas were using) dies.
            cluster[lead].proc.kill()
            cluster[lead].proc.wait()
            answers = watch_fleet(b, fleet, WINDOW / 2)
            late = f"127.0.0.1:{free_port()}"
            reg.register("late", late)  # accepted through A while a member is down ...
            fleet["late"] = late
            wait_for("late (registered through A) listed through B", lambda: listed(b) == fleet)  # ... and shared
            answers += watch_fleet(b, fleet, WINDOW / 2)
            assert leader(cluster) != lead  # the two members left elected a new leader
            renewed_before = dict(reg.renewed)

            # Replica A dies without a word; the registrants renew through B from now on.
            a.kill()
            reg.switch(b.address)
            answers += watch_fleet(b, fleet, WINDOW)  # longer than a lease: renewals through B keep them all
            answer = validated(b)  # "late" is a registration with no daemon behind it: answered, not OK
            assert [v for v in answer if v[0] != "late"] == [("h100", "OK", True), ("vm", "OK", True)], answer
            assert [v[0] for v in answer if v[0] == "late" and v[1] != "OK"] == ["late"], answer
            after_kill = {n: reg.renewed.get(n, 0) - renewed_before.get(n, 0) for n in fleet}
            assert all(count >= 2 for count in after_kill.values()), after_kill  # B took the renewals
            assert not [f for f in reg.failures if b.address in f], reg.failures  # B never refused one
            print(f"answers checked through B: {answers}; renewal failures: {len(reg.failures)} {reg.failures[:3]}")

            # The whole etcd goes: B keeps answering ValidateFleet from what it holds (within the leases
            # it last saw; see test_store_etcd.py for registrations resuming when etcd returns).
            for e in cluster:
                e.proc.kill()
                e.proc.wait()
            answer = validated(b)
            assert [v for v in answer if v[0] != "late"] == [("h100", "OK", True), ("vm", "OK", True)], answer
            with pytest.raises(grpc.RpcError) as err:
                reg.register("during", f"127.0.0.1:{free_port()}", target=b.address)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "etcd" in (err.value.details() or "")
    finally:
        for p in procs:
            p.kill()
