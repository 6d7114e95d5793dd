"""After an etcd outage, the renewals a replica kept through it are written before the replica catches up with the
store (server/inventory/store_etcd.py _renew_held, etcd_kv.PrefixWatch on_reconnect): the outage's "cause 2".

A real in-process aggregator with `--store etcd://` on a real Debian etcd-server, killed and restarted on the same
ports and data. Through the outage a registrant's renewal of its node is answered OK and kept locally (pending).
After the restart etcd gives the leases granted before the outage only about their TTL plus its election time;
the replica wrote the kept renewal only after its watch had loaded and applied the whole prefix, so a catch-up
slower than that (a big fleet on a loaded machine: the first write after a restart was seen past 5.5 s at load
17-37) let etcd expire a live node's lease and every replica drop it. The catch-up is held here (the watch's load
callback waits for the test), which stands for a slow one: the kept renewal must reach etcd meanwhile, on a new
lease of its granted TTL. Before the change, nothing was written until the load ended."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import grpc
import requests
from etcd3gw import Etcd3Client
from support_daemon import stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, start_etcd, wait_for

from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.server.inventory.store_etcd import EtcdRegistrationStore
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
TTL = 30.0  # s: no lease lapses during the test on its own


def _lease_of(e: Etcd, key: str) -> int:
    """The etcd lease `key` is bound to (0: no such key)."""
    host, port = e.endpoint.rsplit(":", 1)
    got = Etcd3Client(host=host, port=int(port), api_path="/v3/").get(key, metadata=True)
    return int(got[0][1].get("lease", 0)) if got else 0


def _ttl_left(e: Etcd, lease_id: int) -> int:
    """s left on an etcd lease (-1: no such lease)."""
    return int(requests.post(f"http://{e.endpoint}/v3/lease/timetolive", json={"ID": lease_id}, timeout=5)
               .json().get("TTL", -1))


def test_renewals_kept_through_an_outage_are_written_before_the_catch_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = start_etcd(tmp_path)  # its own etcd: this test kills it
    prefix = f"/reconnect-{uuid.uuid4().hex}/"
    node_key = f"{prefix}nodes/n1"
    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=TTL, registration=OPEN, sync=None,
                                            check_new_nodes=False, store=e.url, store_prefix=prefix,
                                            store_watch_read_timeout=WATCH_READ_TIMEOUT))
    address = f"127.0.0.1:{agg.start()}"
    catch_up = threading.Event()
    try:
        store = agg.inventory.store
        assert isinstance(store, EtcdRegistrationStore) and store._watch is not None
        key = uuid.uuid4().hex * 2
        with grpc.insecure_channel(address) as ch:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)

            def renew() -> float:
                return float(stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="n1", address="127.0.0.1:7001"),
                                               timeout=20, metadata=[(LEASE_KEY_METADATA, key)]).ttl_seconds)

            assert renew() == TTL
            before = _lease_of(e, node_key)
            assert before != 0
            stop_process(e.proc, 5.0)
            wait_for("the replica sees etcd gone", lambda: not store.available, 20)
            assert renew() == TTL  # answered OK and kept locally through the outage
            assert store.pending() == 1

            loads: list[int] = []
            load: Callable[[list[tuple[str, bytes]]], None] = store._watch.on_load

            def held_load(kvs: list[tuple[str, bytes]]) -> None:  # the catch-up, held until the test lets it go
                loads.append(len(kvs))
                catch_up.wait(60)
                load(kvs)

            store._watch.on_load = held_load
            e = start_etcd(tmp_path, ports=(int(e.endpoint.rsplit(":", 1)[1]), e.peer_port))
            wait_for("the watch reconnected and began its catch-up", lambda: bool(loads), 30)
            # while the catch-up is held: the kept renewal is in etcd, on the lease it granted, and none is pending
            wait_for("the kept renewal written before the catch-up ends",
                     lambda: _lease_of(e, node_key) not in (0, before) and store.pending() == 0, 15)
            assert loads == [1] and not catch_up.is_set()
            assert _ttl_left(e, _lease_of(e, node_key)) > TTL - 10
            catch_up.set()
            wait_for("the catch-up done: etcd answers the replica", lambda: store.available, 20)
            assert [n.name for n in agg.inventory.nodes()] == ["n1"]
            assert renew() == TTL  # renewed through etcd again
    finally:
        catch_up.set()
        agg.stop(grace=0)
        stop_process(e.proc, 5.0)
