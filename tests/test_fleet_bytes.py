"""ValidateFleet's per-node answers assembled from pre-serialized pieces (server/fleet/fleet_bytes.py) are the
bytes the messages built the old way serialize to: every NodeResults message and the summary (ranking
included), for nodes with and without labels, DNS nodes named by their daemon, STALE / unknown / too old
nodes (asked live), identity-reading specs (one verdict per node), a live part mixed in, and across changes
of a node's features, probe time, labels and name with the per-node pieces kept between calls (also when
their byte bound drops most of them). Over gRPC, a real aggregator with real daemons: the raw bytes of the
inventory messages and the summary a caller receives equal the old way's."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from support_fleet import aggregator, start_node
from support_fleetmem import GPU_SPEC, fixture_round

from nodecompat.engine.spec import parse_spec
from nodecompat.fleet.reasons import failure_reasons
from nodecompat.fleet.store import STATE_STALE, FeatureStore, spec_key
from nodecompat.server.fleet.fleet_bytes import NodeBytes, summary_message
from nodecompat.server.fleet.fleet_results import fleet_summary, summarize
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.server.inventory.inventory_answers import BATCH, Plan, finish_summary, plan
from nodecompat.v1 import fleet_pb2, inventory_pb2

IDENTITY_SPEC = """
version: v1alpha1
compatibilities:
- description: named
  rules:
  - name: odd names
    matchFeatures:
    - feature: system.name
      matchExpressions: {nodename: {op: InRegexp, value: ["[13579]$"]}}
"""
PROFILES = ("h100-server", "amd-mi300", "plain-vm")
UNKNOWN: tuple[dict[str, str], ...] = ({}, {}, {"kernel.loadedmodule": "probe kmod failed: test"})  # probe_failed
LABELS = ({}, {"zone": "a"}, {"zone": "b", "rack": "r-7", "gpu": "nvidia", "ünï": "cödé"})


def _old_batches(store: FeatureStore, held: Sequence[FleetNode], spec_text: str) -> tuple[
        list[fleet_pb2.ValidateFleetResponse], list[fleet_pb2.NodeResult]]:
    """The messages inventory_answers._per_node built before fleet_bytes (its code, verdicts from the store)."""
    spec = parse_spec(spec_text)
    records = store.records_by_key([n.address for n in held])
    verdicts = store.evaluate(spec, spec_key(spec_text, False), list(records.values()))
    batches: list[fleet_pb2.ValidateFleetResponse] = []
    results: list[fleet_pb2.NodeResult] = []
    for node in held:
        rec = records[node.address]
        v = verdicts[rec.key]
        template = fleet_pb2.NodeResult(
            compatible=v.compatible, score=v.score, status="OK", reasons=[] if v.compatible else failure_reasons(v),
            source=inventory_pb2.INVENTORY, fingerprint=rec.fingerprint)
        if len(results) % BATCH == 0:
            batch = fleet_pb2.ValidateFleetResponse()
            batch.nodes.SetInParent()
            batches.append(batch)
        r = batch.nodes.nodes.add()
        r.CopyFrom(template)
        r.node_name = rec.name if node.source == SOURCE_DNS and rec.name else node.name
        r.address = node.address
        if node.labels:
            for lk, lv in node.labels.items():
                r.labels[lk] = lv
        secs = int(rec.probed_at)
        r.as_of.seconds = secs
        r.as_of.nanos = int((rec.probed_at - secs) * 1e9)
        results.append(r)
    return batches, results


def _live_results() -> list[fleet_pb2.NodeResult]:
    """What live_message gives for nodes asked live: compatible, incompatible, failed, a name shared with an
    inventory node (the ranking's tie on names is broken by address)."""
    return [
        fleet_pb2.NodeResult(node_name="zz-live", address="10.0.0.9:1", status="OK", compatible=True, score=7,
                             latency_seconds=0.01, attempts=1, source=inventory_pb2.LIVE),
        fleet_pb2.NodeResult(node_name="n-0003", address="0.0.0.0:9", status="OK", compatible=False,
                             reasons=["x"], latency_seconds=0.02, attempts=1, source=inventory_pb2.LIVE),
        fleet_pb2.NodeResult(node_name="down", address="10.0.0.8:1", status="UNAVAILABLE", error="refused",
                             latency_seconds=0.03, attempts=3, source=inventory_pb2.LIVE),
    ]


def _compare(store: FeatureStore, nodes: list[FleetNode], spec_text: str, cache: NodeBytes,
             staleness: float = 0.0) -> Plan:
    """plan() with `cache` and the old way give the same bytes, message by message; returns the plan."""
    spec = parse_spec(spec_text)
    p = plan(store, nodes, spec, spec_key(spec_text, False), [], staleness, node_bytes=cache)
    live_nodes = {n.address for n in p.live}
    held = [n for n in nodes if n.address not in live_nodes]
    old, old_results = _old_batches(store, held, spec_text)
    assert p.batches == [m.SerializeToString() for m in old]
    live = _live_results()
    p.ranking.add_live(live)
    new_summary = fleet_summary(p, p.ranking, "sha256:i", "sha256:a", 0.25)
    finish_summary(new_summary, p, [], len(live))
    old_summary = summarize(old_results + live, "sha256:i", "sha256:a", 0.25)
    finish_summary(old_summary, p, [], len(live))
    assert len(old_summary.ranking) == len(held) + len(live) and old_summary.why_not
    assert summary_message(new_summary, p.ranking) == fleet_pb2.ValidateFleetResponse(
        summary=old_summary).SerializeToString()
    return p


def _fleet(n: int) -> tuple[FeatureStore, list[FleetNode]]:
    """n nodes over the three fixture profiles, with varied labels; node 5 is a DNS node whose daemon
    reported a name, node 6 a DNS node that reported none, node 7 STALE, node 8 unknown to the store, node 9
    probed 10 minutes ago, node 10 at a whole second; names not in address order."""
    store = FeatureStore()
    now = time.time()
    nodes = []
    for i in range(n):
        name, address = f"n-{(i * 7919) % n:04d}", f"10.{i // 250}.{i % 250}.1:7"
        source = "file"
        if i in (5, 6):
            name, source = address, SOURCE_DNS
        nodes.append(FleetNode(name, address, LABELS[i % 3], source))
        if i == 8:
            continue
        reported = "reported-5" if i == 5 else "" if i == 6 else name
        at = float(int(now)) if i == 10 else now - (600 if i == 9 else 0) + i * 1e-3  # node 10: nanos 0
        k = i % 3
        if i < 3:  # each profile's first node: its features, with its own host name (identity)
            f = copy.deepcopy(fixture_round(PROFILES[k]).features)
            f.add_attributes("system.name", {"nodename": f"host-{i}"})
            store.put(address, reported, f, UNKNOWN[k], at, 1, wire_key=f"p{k}")
        else:
            assert store.put_known(f"p{k}", address, reported, (("system.name", "nodename", f"host-{i}"),), at, 1)
    store.set_state(nodes[7].address, nodes[7].name, STATE_STALE)
    return store, nodes


def test_node_answers_from_pieces_are_the_old_bytes_across_changes() -> None:
    store, nodes = _fleet(2 * BATCH + 37)  # three messages, the last one short
    cache = NodeBytes()
    for spec in (GPU_SPEC, IDENTITY_SPEC):
        p = _compare(store, nodes, spec, cache)
        assert [n.address for n in p.live] == [nodes[7].address, nodes[8].address]
        assert len(p.batches) == 3 and p.answered == len(nodes) - 2
    p = _compare(store, nodes, GPU_SPEC, cache, staleness=60.0)  # node 9 too old: asked live
    assert [n.address for n in p.live] == [nodes[i].address for i in (7, 8, 9)]
    assert len(cache.entries) == len(nodes) - 2

    # changes: node 0 gets another profile (fingerprint and probe time), node 1 a new round of the same
    # features (probe time only), node 2 new labels, node 4 a new name, DNS node 5 another reported name
    # (its probe time kept)
    now = time.time()
    kept = store.records_by_key([nodes[5].address])[nodes[5].address].probed_at
    for i, profile, name, at in ((0, "plain-vm", nodes[0].name, now), (1, PROFILES[1], nodes[1].name, now + 1),
                                 (5, PROFILES[5 % 3], "reported-again", kept)):
        rnd = fixture_round(profile)
        store.put(nodes[i].address, name, rnd.features, {}, at, 2)
    nodes[2] = FleetNode(nodes[2].name, nodes[2].address, {"zone": "moved", "new": "1"}, "file")
    nodes[4] = FleetNode("rénamé-4-" + "x" * 130, nodes[4].address, nodes[4].labels, "file")  # UTF-8, 2-byte length
    before = {a: e[:4] for a, e in cache.entries.items()}
    for spec in (GPU_SPEC, IDENTITY_SPEC):
        _compare(store, nodes, spec, cache)
    # the pieces kept do not move with a probe time (nodes 0 and 1 keep theirs: as_of is the record's)
    changed = {a for a, e in cache.entries.items() if e[:4] != before[a]}
    assert changed == {nodes[i].address for i in (2, 4, 5)}, changed
    assert cache.entries[nodes[5].address][1] == "reported-again"


def test_a_probe_round_later_is_the_old_bytes_with_no_piece_serialized_again() -> None:
    """Every node's probe time moves (heartbeats of a next round, as a minute later): the answer is the old way's
    bytes, every as_of the new time, and not one node's pieces are serialized again (each entry is the same object)."""
    store, nodes = _fleet(BATCH + 11)
    cache = NodeBytes()
    _compare(store, nodes, GPU_SPEC, cache)
    kept = dict(cache.entries)
    time.sleep(0.01)
    later = time.time()
    for rec in store.records():
        if rec.has_features:
            assert store.heartbeat(rec.key, rec.round_id + 1, rec.fingerprint, later)
    p = _compare(store, nodes, GPU_SPEC, cache)  # the old way writes each record's new probe time
    assert kept and all(cache.entries[a] is e for a, e in kept.items())
    got = [r for m in p.batches for r in fleet_pb2.ValidateFleetResponse.FromString(m).nodes.nodes]
    assert len(got) == p.answered and {(r.as_of.seconds, r.as_of.nanos) for r in got} == {
        (int(later), int((later - int(later)) * 1e9))}


def test_an_as_of_written_by_the_store_is_upbs() -> None:
    """NodeRecord.as_of (nodecompat/fleet/timestamp_wire.py, written when the store records a probe time) behind
    its tag and length (fleet_bytes.as_of_field) against upb's encoding of the NodeResult's as_of."""
    from nodecompat.fleet.store import NodeRecord
    from nodecompat.server.fleet.fleet_bytes import as_of_field

    now = time.time()
    for probed in (0.0, 0.5, 1e-9, 1.0, 1.5, 127.0, 128.25, now, float(int(now)), now + 0.999999999, 2.0**31 + 1e-6,
                   2.0**35 + 0.5, -1.0, -1.5, -(2.0**40) - 0.25, *(now + i * 1.37e-4 for i in range(2000))):
        r = fleet_pb2.NodeResult()
        secs = int(probed)
        r.as_of.seconds = secs
        r.as_of.nanos = int((probed - secs) * 1e9)
        assert as_of_field(NodeRecord(key="k", name="n", probed_at=probed)) == r.SerializeToString(), probed


def test_the_pieces_kept_are_bounded_in_bytes() -> None:
    store, nodes = _fleet(300)
    cache = NodeBytes(max_bytes=20_000)
    for _ in range(2):
        _compare(store, nodes, GPU_SPEC, cache)
        assert 0 < cache.bytes <= 20_000 and len(cache.entries) < 100
        assert cache.bytes == sum(e[5] for e in cache.entries.values())


def _raw_call(address: str, request: fleet_pb2.ValidateFleetRequest) -> list[bytes]:
    """The response messages' bytes as received (no parsing)."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_stream("/nodecompat.v1.FleetService/ValidateFleet",
                               request_serializer=fleet_pb2.ValidateFleetRequest.SerializeToString,
                               response_deserializer=None)
        return list(call(request, timeout=30))


def test_a_mixed_inventory_and_live_answer_over_grpc_is_the_old_bytes(tmp_path: Path) -> None:
    """A real aggregator answering 1,200 nodes from its inventory and three real daemons live: one unknown
    to the store, one STALE, one probed 10 minutes ago (live only with max_staleness_seconds). The bytes a
    caller receives for the inventory's messages and for the summary are the old way's."""
    daemons = [start_node(tmp_path, f"live-{h}", h, wait=False) for h in PROFILES]
    try:
        for d in daemons:
            d.wait_serving()
        store, nodes = _fleet(BATCH + 200)
        nodes = [n for n in nodes if n.source == "file"][10:] + [
            FleetNode(d.name, d.address, {"zone": "live"}, "file") for d in daemons]
        nodes.sort(key=lambda n: (n.name, n.address))  # NodeInventory.nodes()' order
        now = time.time()
        for d, at in zip(daemons[1:], (now, now - 600), strict=True):
            rnd = fixture_round(PROFILES[daemons.index(d)])
            store.put(d.address, d.name, rnd.features, {}, at, 1)
        store.set_state(daemons[1].address, daemons[1].name, STATE_STALE)
        nodes_file = tmp_path / "nodes.json"
        nodes_file.write_text(json.dumps([{"name": n.name, "address": n.address, "labels": dict(n.labels)}
                                          for n in nodes]))
        with aggregator(nodes_file=str(nodes_file), check_new_nodes=False) as agg:
            agg.service.store = store
            address = agg.address  # type: ignore[attr-defined]
            for staleness, live_names in ((0.0, {"live-h100-server", "live-amd-mi300"}),
                                          (60.0, {d.name for d in daemons})):
                raw = _raw_call(address, fleet_pb2.ValidateFleetRequest(
                    spec=GPU_SPEC, timeout_seconds=20, max_staleness_seconds=staleness))
                msgs = [fleet_pb2.ValidateFleetResponse.FromString(b) for b in raw]
                kinds = [m.WhichOneof("item") for m in msgs]
                results = [r for m in msgs if m.WhichOneof("item") == "nodes" for r in m.nodes.nodes] + [
                    m.node for m in msgs if m.WhichOneof("item") == "node"]
                live = [r for r in results if r.source == inventory_pb2.LIVE]
                assert {r.node_name for r in live} == live_names and all(r.status == "OK" for r in live)
                held = [n for n in nodes if n.name not in live_names]
                old, old_results = _old_batches(store, held, GPU_SPEC)
                assert kinds[:len(old)] == ["nodes"] * len(old) and kinds[-1] == "summary"
                assert raw[:len(old)] == [m.SerializeToString() for m in old]
                got = msgs[-1].summary
                assert (got.from_inventory, got.live) == (len(held), len(live_names))
                want = summarize(old_results + live, "", "", got.wall_seconds)
                for f in ("why_not", "from_inventory", "live", "probe_failed", "distinct_feature_sets"):
                    if f == "why_not":
                        want.why_not.extend(got.why_not)
                    else:
                        setattr(want, f, getattr(got, f))
                assert raw[-1] == fleet_pb2.ValidateFleetResponse(summary=want).SerializeToString()
    finally:
        for d in daemons:
            d.kill()


def test_a_node_s_own_fields_written_by_hand_are_upbs() -> None:
    """fleet_bytes.entry writes node_name, address and a single label itself (more labels: upb): the same bytes
    as upb's for empty names, addresses, keys and values, multi-byte UTF-8, a 2-byte length, and two labels."""
    from nodecompat.server.fleet.fleet_bytes import entry

    long = "ü" * 100  # 200 bytes: a 2-byte length
    for node in (FleetNode("n", "a:1", {}, "file"), FleetNode("", "", {}, "file"),
                 FleetNode("", "a:1", {"": ""}, "file"), FleetNode(long, long, {long: long}, "file"),
                 FleetNode("x", "10.0.0.1:7", {"": "b"}, "file"),
                 FleetNode("x", "y", {"a": ""}, "file"), FleetNode("x", "y", {"zone": "b", "rack": "r-7"}, "file")):
        for name in (node.name, "reported", ""):
            e = entry(node, name)
            r = fleet_pb2.NodeResult(node_name=name, address=node.address)
            for k, v in node.labels.items():
                r.labels[k] = v
            assert e[2] + e[3] == r.SerializeToString() and e[2] == fleet_pb2.NodeResult(
                node_name=name).SerializeToString(), (node, name)
