"""The live inventory shared out among aggregator replicas over etcd (issue 14, server/inventory/inventory_shards.py):
one etcd, three real `nodecompat serve` daemons registered through replica A, three replicas (A and B
in-process, C an `nodecompat aggregator` process). Every node is subscribed (WatchFeatures) by exactly one
replica; ValidateFleet through any replica answers every node from the inventory; SIGKILL of C: its nodes are
taken over by A or B within a bound and still answered from the inventory through A and B."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from etcd3gw import Etcd3Client
from support_etcd import WATCH_READ_TIMEOUT, Etcd, etcd, wait_for  # noqa: F401 (fixture)
from support_fleet import FLEET, SPEC_ANY, Proc, start_aggregator_process, start_node

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.features import Features
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.inventory_shards import REPLICA_TTL, NodeDoc, rendezvous_owner
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.inventory.shard_docs import decode_set, encode_set
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)
TAKEOVER_BOUND = REPLICA_TTL + 15.0  # seconds: lease expiry + watch + reconcile + one stream, with room for load


def test_rendezvous_moves_only_a_dead_replicas_nodes() -> None:
    addresses = [f"10.0.{i // 250}.{i % 250}:5000" for i in range(2000)]
    three = frozenset({"a", "b", "c"})
    before = {a: rendezvous_owner(a, three) for a in addresses}
    counts = {r: sum(1 for o in before.values() if o == r) for r in three}
    assert all(500 < n < 850 for n in counts.values()), counts  # shared out about evenly
    after = {a: rendezvous_owner(a, frozenset({"a", "b"})) for a in addresses}
    moved = {a for a in addresses if before[a] != after[a]}
    assert moved == {a for a in addresses if before[a] == "c"}  # only c's nodes move ...
    assert {after[a] for a in moved} == {"a", "b"}  # ... and to both survivors
    grown = {a: rendezvous_owner(a, three | {"d"}) for a in addresses}
    assert {before[a] for a in addresses if grown[a] != before[a]} <= three
    assert all(grown[a] == "d" for a in addresses if grown[a] != before[a])  # a newcomer takes, never shuffles


def test_a_shared_feature_set_round_trips_and_is_checked_against_its_fingerprint() -> None:
    feats = Features()
    feats.add_flags("cpu.cpuid", ["AVX2", "AVX512F"])
    feats.add_attributes("kernel.version", {"major": "6", "minor": "1", "full": "6.1.0-18-amd64"})
    feats.set_instances("pci.device", [{"vendor": "10de", "class": "0302"}, {"vendor": "8086", "class": "0200"}])
    unknown = {"cpu.topology": "probe cpu failed: permission denied"}
    raw = encode_set(feats, unknown)
    fp = fingerprint(feats, unknown)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == fp  # stored under the inventory's own fingerprint
    back, back_unknown = decode_set(raw, fp)
    assert back.to_nfd() == feats.to_nfd() and back_unknown == unknown
    assert fingerprint(back, back_unknown) == fp  # a reader's FeatureStore recomputes the same one
    for bad, why in ((raw.replace(b"10de", b"1002"), "do not match"), (b"{}", "do not match")):
        with pytest.raises(ValueError, match=why):
            decode_set(bad, fp)
    junk = b'{"features": 3}'
    with pytest.raises(ValueError):
        decode_set(junk, "sha256:" + hashlib.sha256(junk).hexdigest())


@contextlib.contextmanager
def in_process(store: str, prefix: str, replica_id: str, nodes_file: str | None = None) -> Iterator[AggregatorDaemon]:
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=600.0, registration=OPEN,
                                          sync=SyncConfig(heartbeat=1.0), store=store, store_prefix=prefix,
                                          replica_id=replica_id, check_new_nodes=False, nodes_file=nodes_file,
                                          store_watch_read_timeout=WATCH_READ_TIMEOUT))
    d.address = f"127.0.0.1:{d.start()}"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop(grace=0)


def docs(e: Etcd, prefix: str) -> dict[str, NodeDoc]:
    """address -> the document its owner publishes in etcd."""
    host, port = e.endpoint.rsplit(":", 1)
    client = Etcd3Client(host=host, port=int(port), api_path="/v3/")
    base = f"{prefix}shards/nodes/"
    return {meta["key"].decode()[len(base):]: NodeDoc.decode(value) for value, meta in client.get_prefix(base)}


def subscribed(d: AggregatorDaemon) -> set[str]:
    """The addresses the replica holds a WatchFeatures subscription for (InventorySync's tasks)."""
    assert d.sync is not None
    return set(d.sync._tasks)


def answers(address: str) -> list[tuple[str, str, bool, str]]:
    with FleetClient(address) as client:
        answer = client.validate(spec_text=SPEC_ANY, timeout=20)
    return sorted((v.name, v.status, v.compatible, v.source) for v in answer.nodes)


def register_all(aggregator: str, fleet: dict[str, str]) -> None:
    """RegisterNode every (address -> name) of `fleet` through the aggregator at `aggregator` (lease 600 s)."""
    with grpc.insecure_channel(aggregator) as ch:
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        for address, name in fleet.items():
            stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name=name, address=address, ttl_seconds=600), timeout=10)


def test_subscriptions_shared_out_and_taken_over_when_a_replica_dies(etcd: Etcd, tmp_path) -> None:  # noqa: F811
    prefix = f"/shards-{uuid.uuid4().hex}/"
    daemons = [start_node(tmp_path, name, host, wait=False) for name, host in FLEET.items()]
    procs: list[Proc] = list(daemons)
    try:
        for d in daemons:
            d.wait_serving()
        fleet = {d.address: d.name for d in daemons}
        ids = ["a-" + uuid.uuid4().hex[:8], "b-" + uuid.uuid4().hex[:8]]
        while True:  # C must own some node, or its death would take nothing over
            c_id = "c-" + uuid.uuid4().hex[:8]
            owners = {a: rendezvous_owner(a, frozenset([*ids, c_id])) for a in fleet}
            if c_id in owners.values():
                break
        with in_process(etcd.url, prefix, ids[0]) as a, in_process(etcd.url, prefix, ids[1]) as b:
            register_all(a.address, fleet)  # type: ignore[attr-defined]
            c = start_aggregator_process(tmp_path, "--store", etcd.url, "--store-prefix", prefix,
                                         "--replica-id", c_id, "--heartbeat", "1",
                                         "--allow-unauthenticated-registration", inventory=True)
            procs.append(c)

            def shared_out() -> bool:
                published = docs(etcd, prefix)
                return (subscribed(a) == {x for x, o in owners.items() if o == ids[0]}
                        and subscribed(b) == {x for x, o in owners.items() if o == ids[1]}
                        and {x: d.owner for x, d in published.items()} == owners
                        and all(d.state == "OK" for d in published.values()))

            wait_for("every node subscribed by exactly its rendezvous owner", shared_out, 30)
            assert not subscribed(a) & subscribed(b)
            expected = sorted((n, "OK", True, "INVENTORY") for n in fleet.values())
            for replica in (a.address, b.address, c.address):  # type: ignore[attr-defined]
                wait_for(f"every node answered from the inventory through {replica}",
                         lambda r=replica: answers(r) == expected, 30)

            c_nodes = {x for x, o in owners.items() if o == c_id}
            c.kill()  # SIGKILL: its replica lease lapses; A and B take its nodes over
            killed = time.monotonic()
            after = {x: rendezvous_owner(x, frozenset(ids)) for x in fleet}

            def taken_over() -> bool:
                published = docs(etcd, prefix)
                return (subscribed(a) | subscribed(b) == set(fleet) and not subscribed(a) & subscribed(b)
                        and {x: d.owner for x, d in published.items()} == after)

            wait_for("C's nodes taken over by A and B", taken_over, TAKEOVER_BOUND)
            took = time.monotonic() - killed
            for replica in (a.address, b.address):  # type: ignore[attr-defined]
                assert answers(replica) == expected
            assert a.shards is not None and b.shards is not None
            assert c_nodes <= a.shards.owned() | b.shards.owned()
            print(f"C owned {len(c_nodes)} of {len(fleet)} nodes; taken over {took:.1f} s after SIGKILL "
                  f"(replica lease {REPLICA_TTL} s)")

            # A node leaving the fleet (deregistered through B) leaves every replica's inventory and etcd.
            gone = next(iter(c_nodes))
            with grpc.insecure_channel(b.address) as ch:  # type: ignore[attr-defined]
                fleet_pb2_grpc.FleetServiceStub(ch).DeregisterNode(
                    fleet_pb2.DeregisterNodeRequest(name=fleet[gone]), timeout=10)
            rest = sorted(v for v in expected if v[0] != fleet[gone])
            for replica in (a, b):
                wait_for(f"{fleet[gone]} gone from {replica.address}",  # type: ignore[attr-defined]
                         lambda r=replica: answers(r.address) == rest  # type: ignore[attr-defined]
                         and r.store is not None and r.store.get(gone) is None)
            wait_for(f"{fleet[gone]}'s document gone from etcd", lambda: gone not in docs(etcd, prefix))
    finally:
        for p in procs:
            p.kill()


def test_a_document_of_a_replica_from_before_volatile_values_is_applied_once(etcd: Etcd) -> None:  # noqa: F811
    """A replica from before volatile values (a rolling upgrade) stores sets with their usage values, under their
    fingerprint; this replica's store keeps the profile under another. Every reconcile pass compared the document's
    fingerprint with the record's, found them different and put the node again (a new generation, a transition
    for WatchFleet's listeners, each pass, for every such node). The document's fingerprint is kept as the one
    the set was announced under: applied once, the record is current."""
    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server.inventory.etcd_kv import EtcdEndpoints
    from nodecompat.server.inventory.fleet_nodes import SOURCE_REGISTERED, FleetNode
    from nodecompat.server.inventory.inventory_shards import InventoryShards

    feats = Features()
    feats.add_attributes("memory.size", {"total_bytes": "8589934592", "available_bytes": "4294967296"})
    raw = encode_set(feats, {})
    old_fp = "sha256:" + hashlib.sha256(raw).hexdigest()  # the older replica's fingerprint: usage values in
    assert old_fp != fingerprint(feats)
    host, port = etcd.endpoint.rsplit(":", 1)
    kv = EtcdEndpoints([(host, int(port))])
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    kv.put_many([(f"{prefix}/shards/sets/{old_fp}/old", raw, 0)])
    store = FeatureStore()
    node = FleetNode("n1", "127.0.3.1:7000", {}, SOURCE_REGISTERED)
    shards = InventoryShards(kv, prefix, lambda: [node], store, replica_id="new")
    doc = NodeDoc("old", "n1", old_fp, (), time.time() - 5, 3, "OK", "")
    now = time.monotonic()
    shards._apply_doc(node, doc, None, now)
    rec = store.get(node.address)
    assert rec is not None and rec.fingerprint == fingerprint(feats) and rec.announced == old_fp
    generation = store.generation
    shards._apply_doc(node, doc, rec, now)  # the next reconcile pass, the same document
    assert store.generation == generation  # nothing put again


@contextlib.contextmanager
def two_replicas_b_owning_a_node(e: Etcd, tmp_path: Path) -> Iterator[tuple[AggregatorDaemon, AggregatorDaemon, str,
                                                                             list[str], dict[str, str], str, list]]:
    """The fleet's 3 real daemons registered through replica A of two in-process replicas (ids: A, B) sharing one
    etcd prefix, B owning at least one node (`moved`, which A would own alone); yields once every document is
    published by its owner and both answer every node from the inventory: (a, b, prefix, ids, fleet address ->
    name, moved, expected answers). The daemons are killed after."""
    prefix = f"/shards-{uuid.uuid4().hex}/"
    daemons = [start_node(tmp_path, name, host, wait=False) for name, host in FLEET.items()]
    try:
        for d in daemons:
            d.wait_serving()
        fleet = {d.address: d.name for d in daemons}
        while True:  # B must own some node
            ids = ["a-" + uuid.uuid4().hex[:8], "b-" + uuid.uuid4().hex[:8]]
            owners = {x: rendezvous_owner(x, frozenset(ids)) for x in fleet}
            if ids[1] in owners.values():
                break
        moved = next(x for x, o in owners.items() if o == ids[1])
        with in_process(e.url, prefix, ids[0]) as a, in_process(e.url, prefix, ids[1]) as b:
            register_all(a.address, fleet)  # type: ignore[attr-defined]
            expected = sorted((n, "OK", True, "INVENTORY") for n in fleet.values())
            wait_for("every node published by its owner and answered from the inventory by both",
                     lambda: {x: d.owner for x, d in docs(e, prefix).items()} == owners
                     and all(answers(r.address) == expected for r in (a, b)), 30)  # type: ignore[attr-defined]
            yield a, b, prefix, ids, fleet, moved, expected
    finally:
        for d in daemons:
            d.kill()


def test_a_document_overwritten_by_a_former_owner_and_deleted_is_written_again(etcd: Etcd, tmp_path) -> None:  # noqa: F811
    """A former owner's late write: A's _publish takes the nodes it owns, the node moves to B (B subscribes, hears
    it, publishes its document), then A's etcd write lands on top of B's and A's next pass deletes it as no longer
    its own. B still believed its document was in etcd and never wrote it again: every other replica lost the node
    for good (its record STALE, or none after A's own was removed), and a replica's death was never fully taken
    over (bench_store_etcd.py's `sharded` rows, issue 12). B now writes it again (its watch shows the overwrite)."""
    import dataclasses

    with two_replicas_b_owning_a_node(etcd, tmp_path) as (a, b, prefix, ids, fleet, moved, expected):
        assert a.shards is not None and b.shards is not None
        # what A's _publish does with a document it computed while the node was still its own: the put (on A's
        # lease, landing after B's) and the note of what it wrote; A's next pass deletes it (not A's any more)
        late = dataclasses.replace(docs(etcd, prefix)[moved], owner=ids[0])
        a.shards.etcd.put_many([(a.shards._doc_key(moved), late.encode(), a.shards._lease)])
        with a.shards._lock:
            a.shards._published[moved] = late
        wait_for("A's late document deleted by A or overwritten by B",
                 lambda: getattr(docs(etcd, prefix).get(moved), "owner", "") != ids[0], 10)
        wait_for(f"{fleet[moved]}'s document written again by its owner B",
                 lambda: getattr(docs(etcd, prefix).get(moved), "owner", "") == ids[1], 10)  # one read
        wait_for(f"{fleet[moved]} answered from the inventory through A and B again",
                 lambda: all(answers(r.address) == expected for r in (a, b)), 10)  # type: ignore[attr-defined]
        rec = a.store.get(moved) if a.store is not None else None
        assert rec is not None and rec.state == "OK" and moved in b.shards.owned() and moved not in a.shards.owned()


def test_older_daemons_are_shared_out_renewed_and_taken_over(etcd: Etcd, tmp_path) -> None:  # noqa: F811
    """Daemons from before volatile values (bench/bench_inventory.py's simulator with --older-daemons: usage values
    in their features and in the fingerprint they announce, so every owner's record has announced != fingerprint)
    behind two replicas: every replica answers every node from the inventory, the heartbeats naming the announced
    fingerprint renew the owners' records (no stream resubscribed: a 'missed change' would reconnect it), and a
    replica's death is taken over. A mixed-version fleet takes this path; the bench's simulator took it by mistake
    until it computed its fingerprint from what it sends (issue 12's `sharded` rows were lost documents instead:
    test_a_document_overwritten_by_a_former_owner_and_deleted_is_written_again)."""
    import json
    import os
    import subprocess
    import sys

    n = 20
    port_file = tmp_path / "sim-port"
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_inventory.py"
    sim = subprocess.Popen([sys.executable, str(bench), "--serve-simulator", str(port_file), "--profiles", "3",
                            "--older-daemons"], env={**os.environ, "BENCH_SIM_NODES": str(n)})
    try:
        wait_for("the simulator's port", lambda: port_file.exists() and bool(port_file.read_text()), 60)
        port = int(port_file.read_text())
        names = {f"127.1.0.{1 + i}:{port}": f"sim-{i:05d}" for i in range(n)}  # bench_inventory.node_address
        nodes_file = tmp_path / "nodes.json"
        nodes_file.write_text(json.dumps([{"name": v, "address": k} for k, v in names.items()]))
        prefix = f"/shards-{uuid.uuid4().hex}/"
        expected = sorted((v, "OK", True, "INVENTORY") for v in names.values())
        with (in_process(etcd.url, prefix, "a-" + uuid.uuid4().hex[:8], str(nodes_file)) as a,
              in_process(etcd.url, prefix, "b-" + uuid.uuid4().hex[:8], str(nodes_file)) as b):
            assert a.shards is not None and b.shards is not None and a.sync is not None and b.sync is not None

            def owners_hold(*live: AggregatorDaemon) -> bool:
                mine = [(d.store.get(x) if d.store else None) for d in live for x in d.shards.owned()]  # type: ignore[union-attr]
                return len(mine) == n and all(r is not None and r.state == "OK" and r.announced for r in mine)

            wait_for("every node held by its owner with the fingerprint it announced", lambda: owners_hold(a, b), 30)
            for d in (a, b):
                wait_for("every node answered from the inventory", lambda d=d: answers(d.address) == expected, 30)
            mine = [(d.store.get(x) if d.store else None) for d in (a, b) for x in d.shards.owned()]
            assert all(r is not None and r.announced != r.fingerprint for r in mine)  # the older-daemon path
            connects = a.sync.connects + b.sync.connects
            time.sleep(3.5)  # 3 heartbeats (1 s)
            assert a.sync.connects + b.sync.connects == connects  # every heartbeat renewed: no stream reconnected
            for d in (a, b):
                assert answers(d.address) == expected
            b.shards._lease = 0  # not revoked: B's lease lapses as after SIGKILL
            b.stop(grace=0)
            wait_for("B's nodes taken over by A", lambda: a.shards.owned() == set(names) and owners_hold(a),  # type: ignore[union-attr]
                     TAKEOVER_BOUND)
            assert answers(a.address) == expected  # type: ignore[attr-defined]
    finally:
        sim.terminate()
        sim.wait()


def test_a_late_overwrite_and_deletion_heard_while_the_owner_notes_its_own_write_is_written_again(
    etcd: Etcd, tmp_path  # noqa: F811
) -> None:
    """The previous test's race, one step later: the owner B's watch hears a former owner's late put and its deletion
    pass after B's own put has landed in etcd but before B notes what it wrote (_publish's put_many has returned,
    _published not yet updated). Noting the write after the put undid the watch's `written again` (its pop found
    nothing to drop), so B believed its document was in etcd while etcd held none: every other replica lost the
    node for good. Real etcd, 3 real daemons, 2 in-process replicas; B's put is followed, before it returns to
    _publish, by A's late put and A's deletion (as A's own passes make them) and B's watch handling both."""
    import dataclasses
    import threading

    with two_replicas_b_owning_a_node(etcd, tmp_path) as (a, b, prefix, ids, fleet, moved, expected):
        assert a.shards is not None and b.shards is not None
        sa, sb = a.shards, b.shards
        key = sb._doc_key(moved)
        heard: list[bool] = []  # B's watch: each event of the moved node's key handled (deleted?)
        watch = next(w for w in sb._watches if w.prefix.endswith("nodes/"))
        handle = watch.on_event

        def on_event(k: str, raw: bytes, deleted: bool) -> None:
            handle(k, raw, deleted)
            if k == key:
                heard.append(deleted)

        watch.on_event = on_event  # type: ignore[method-assign]
        put_many = sb.etcd.put_many
        raced = threading.Event()

        def late_put_and_delete(puts, deletes=()):  # type: ignore[no-untyped-def]
            put_many(puts, deletes)
            if raced.is_set() or not any(k == key for k, _, _ in puts):
                return
            raced.set()
            late = dataclasses.replace(docs(etcd, prefix)[moved], owner=ids[0])
            sa.etcd.put_many([(key, late.encode(), sa._lease)])  # A's late put, on A's lease
            sa.etcd.txn({"compare": [{"key": _b64(key), "result": "EQUAL", "target": "LEASE", "lease": sa._lease}],
                         "success": [{"request_delete_range": {"key": _b64(key)}}], "failure": []})
            wait_for("B's watch handled A's put and deletion", lambda: heard[-2:] == [False, True], 10)

        sb.etcd.put_many = late_put_and_delete  # type: ignore[method-assign]
        with sb._lock:
            heard.clear()
            sb._published.pop(moved, None)  # B writes its document again at its next pass
        wait_for("the race played", raced.is_set, 10)
        wait_for(f"{fleet[moved]}'s document written again by its owner B",
                 lambda: getattr(docs(etcd, prefix).get(moved), "owner", "") == ids[1], 10)  # one read
        wait_for(f"{fleet[moved]} answered from the inventory through A and B",
                 lambda: all(answers(r.address) == expected for r in (a, b)), 10)  # type: ignore[attr-defined]


def _b64(key: str) -> str:
    import base64

    return base64.b64encode(key.encode()).decode()
