"""An etcd outage under two aggregator replicas (issue 14: "keeps answering from what it has, reports itself
NOT_SERVING only for what it cannot know, recovers when etcd returns"; server/inventory/store_etcd.py,
registration_health.py, inventory_shards.py). One etcd, killed for longer than two leases, then
restarted on the same ports and data: through the outage both replicas list the registered nodes and answer
the daemon from the inventory, renewals (the daemon's own `serve --register` heartbeats through A, a
registrant's through B) are answered OK, a new name is refused UNAVAILABLE naming etcd, health says
NOT_SERVING for RegisterNode only; when etcd returns, RegisterNode is SERVING again, the renewals kept
through the outage are in etcd and a new registration reaches the other replica."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from etcd3gw import Etcd3Client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support_daemon import free_port, stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, start_etcd, wait_for
from support_fleet import SPEC_ANY, start_node

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import FLEET_SERVICE, AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.server.inventory.registration_health import REGISTRATION_HEALTH
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
TTL = 5.0  # seconds: the registrations' lease (the daemon renews every TTL/3). After the restart etcd gives the
# leases granted before the outage about TTL + its election time; a replica whose first write after the restart
# takes longer than that (seen past 5.5 s on a 2-CPU machine at load 17-37 with TTL 3) loses the node until its
# next renewal. Production leases are 30 s; see the note on issue 14's open item.
OUTAGE = 3 * TTL  # seconds etcd stays down: longer than two leases


@contextlib.contextmanager
def replica(store: str, prefix: str) -> Iterator[AggregatorDaemon]:
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=TTL, registration=OPEN,
                                          sync=SyncConfig(heartbeat=1.0), store=store, store_prefix=prefix,
                                          check_new_nodes=False, store_watch_read_timeout=WATCH_READ_TIMEOUT))
    d.address = f"127.0.0.1:{d.start()}"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop(grace=0)


def health(address: str, service: str) -> str:
    with grpc.insecure_channel(address) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def names(address: str) -> set[str]:
    with FleetClient(address) as client:
        return {n.name for n in client.list_nodes(timeout=5)}


def register(address: str, name: str, node: str, key: str, ttl: float = TTL) -> None:
    with grpc.insecure_channel(address) as ch:
        fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
            fleet_pb2.RegisterNodeRequest(name=name, address=node, ttl_seconds=ttl), timeout=10,
            metadata=[(LEASE_KEY_METADATA, key)])


def stored(e: Etcd, prefix: str) -> set[str]:
    host, port = e.endpoint.rsplit(":", 1)
    client = Etcd3Client(host=host, port=int(port), api_path="/v3/")
    return {meta["key"].decode().rsplit("/", 1)[1] for _v, meta in client.get_prefix(f"{prefix}nodes/")}


def test_an_etcd_outage_keeps_answers_and_leases_and_says_not_serving_for_registrations_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = start_etcd(tmp_path)
    prefix = f"/outage-{uuid.uuid4().hex}/"
    node = None
    try:
        with replica(e.url, prefix) as a, replica(e.url, prefix) as b:
            aa, ba = a.address, b.address  # type: ignore[attr-defined]
            node = start_node(tmp_path, "edge1", "plain-vm", args=["--register", aa])
            held_key, held_at = uuid.uuid4().hex * 2, f"127.0.0.1:{free_port()}"
            register(ba, "held", held_at, held_key)
            renewals: list[tuple[float, str]] = []  # (when, "OK" or the refusal) of each renewal through B
            stop = threading.Event()

            def renew() -> None:  # "held" renewed through B every third of its lease, as a daemon would
                while not stop.wait(TTL / 3):
                    try:
                        register(ba, "held", held_at, held_key)
                        renewals.append((time.monotonic(), "OK"))
                    except grpc.RpcError as exc:
                        renewals.append((time.monotonic(), f"{exc.code().name}: {exc.details()}"))

            renewer = threading.Thread(target=renew, daemon=True)
            renewer.start()
            fleet = {"edge1", "held"}
            wait_for("both registrations on both replicas", lambda: names(aa) == fleet and names(ba) == fleet)
            for r in (aa, ba):
                assert (health(r, FLEET_SERVICE), health(r, REGISTRATION_HEALTH)) == ("SERVING", "SERVING")

            def inventory_answer(r: str) -> list[tuple[str, str, bool, str]]:
                with FleetClient(r) as client:
                    ans = client.validate(spec_text=SPEC_ANY, timeout=20)
                return [(v.name, v.status, v.compatible, v.source) for v in ans.nodes if v.name == "edge1"]

            for r in (aa, ba):
                wait_for(f"edge1 answered from the inventory through {r}",
                         lambda r=r: inventory_answer(r) == [("edge1", "OK", True, "INVENTORY")])

            missing: list[str] = []

            def watch() -> None:  # every listing through either replica, outage and recovery included
                while not stop.wait(0.2):
                    for r in (aa, ba):
                        try:
                            got = names(r)
                        except grpc.RpcError as exc:
                            missing.append(f"{r}: {exc.code().name}")
                            continue
                        if not fleet <= got:
                            missing.append(f"{'A' if r == aa else 'B'} at {time.monotonic() - t0:.1f} s: {sorted(got)}")

            t0 = time.monotonic()
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                stop_process(e.proc, 5.0)
                down = time.monotonic()
                print(f"etcd killed at {down - t0:.1f} s")
                for r in (aa, ba):
                    wait_for(f"RegisterNode NOT_SERVING on {r}", lambda r=r: health(r, REGISTRATION_HEALTH)
                             == "NOT_SERVING", 15)
                while time.monotonic() - down < OUTAGE:
                    for r in (aa, ba):
                        assert health(r, FLEET_SERVICE) == "SERVING" and health(r, "") == "SERVING"
                    time.sleep(0.5)
                during = [why for t, why in renewals if t > down]
                assert len(during) >= 6 and set(during) == {"OK"}, during  # renewals kept locally, answered OK
                with pytest.raises(grpc.RpcError) as err:  # a new name needs the store's transaction
                    register(aa, "during", f"127.0.0.1:{free_port()}", uuid.uuid4().hex)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "etcd" in (err.value.details() or "")
                for r in (aa, ba):  # still answered from what the replicas hold, two leases later
                    assert inventory_answer(r) == [("edge1", "OK", True, "INVENTORY")]
                    assert names(r) == fleet

                print(f"etcd restarted at {time.monotonic() - t0:.1f} s")
                e = start_etcd(tmp_path, ports=(int(e.endpoint.rsplit(":", 1)[1]), e.peer_port))
                for r in (aa, ba):
                    wait_for(f"RegisterNode SERVING again on {r}", lambda r=r: health(r, REGISTRATION_HEALTH)
                             == "SERVING", 20)
                wait_for("the renewals kept through the outage written to etcd", lambda: stored(e, prefix) == fleet)
                register(aa, "after", f"127.0.0.1:{free_port()}", uuid.uuid4().hex, ttl=600)
                wait_for("a registration after the outage reaches the other replica", lambda: "after" in names(ba))
                time.sleep(TTL)  # and nothing lapses once etcd holds the leases again
            finally:
                stop.set()
                watcher.join(10)
                renewer.join(15)
            assert not missing, missing[:5]
            assert names(aa) == names(ba) == fleet | {"after"}
            assert {why for _t, why in renewals} == {"OK"}, renewals
            print(f"outage {OUTAGE:g} s, {len(during)} renewals answered OK through B during it")
    finally:
        if node is not None:
            node.kill()
        stop_process(e.proc, 5.0)


def test_a_replica_starting_without_etcd_watches_every_node_and_serves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No etcd answers at start: the replica cannot know the others, so it watches every node itself (it alone
    answers for the fleet), FleetService is SERVING and only RegisterNode is NOT_SERVING."""
    nodes = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    nodes_file = tmp_path / "nodes.json"
    nodes_file.write_text("[" + ",".join(f'{{"name": "n{i}", "address": "{a}"}}' for i, a in enumerate(nodes)) + "]")
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", registration=OPEN, sync=SyncConfig(heartbeat=1.0),
                                          store=f"etcd://127.0.0.1:{free_port()}", nodes_file=str(nodes_file),
                                          check_new_nodes=False))
    address = f"127.0.0.1:{d.start()}"
    try:
        assert d.sync is not None and d.shards is not None
        wait_for("every node subscribed by the lone replica", lambda: d.sync.subscriptions() == 3)  # type: ignore[union-attr]
        assert d.shards.owned() == set(nodes)
        wait_for("RegisterNode NOT_SERVING", lambda: health(address, REGISTRATION_HEALTH) == "NOT_SERVING")
        assert health(address, FLEET_SERVICE) == "SERVING" and health(address, "") == "SERVING"
        assert names(address) == {"n0", "n1", "n2"}
    finally:
        d.stop(grace=0)
