"""ValidateFleet from the inventory: which nodes the aggregator answers itself, and the why-not summary.

A node is answered from the inventory (source INVENTORY) when its stream is healthy (state OK: a
message within the heartbeat timeout) and, if the request sets max_staleness_seconds, its features'
probe time is within that; every other node (no features yet, STALE, UNREACHABLE, too old, or refused
by the store's byte budget) is asked live through the fan-out within the same deadline (source LIVE).
The spec is evaluated once per distinct feature set (FeatureStore.evaluate); reasons come from the same
function the live path uses (nodecompat.fleet.reasons), so both paths give identical results for the
same features. LIVE answers carry no as_of: ValidateImage does not say which round it used.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from nodecompat import wire
from nodecompat.engine.spec import Spec
from nodecompat.fleet import whynot
from nodecompat.fleet.reasons import failure_reasons
from nodecompat.fleet.store import STATE_OK, FeatureStore, NodeRecord, reads_identity
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.v1 import fleet_pb2, inventory_pb2

BATCH = 1000  # inventory answers per ValidateFleetResponse (one NodeResult per node)
GROUPED_BYTES = 1 << 20  # about this many bytes of node fields and shared results per grouped ValidateFleetResponse


@dataclass
class Plan:
    # the answered nodes (elements of the batches' messages; empty when grouped) and the messages to send
    results: list[fleet_pb2.NodeResult] = field(default_factory=list)
    batches: list[fleet_pb2.ValidateFleetResponse] = field(default_factory=list)
    live: list[FleetNode] = field(default_factory=list)
    # (verdict, nodes sharing it) for the why-not counts
    groups: list[tuple[Any, int]] = field(default_factory=list)
    probe_failed: int = 0
    distinct: int = 0
    answered: int = 0  # nodes answered from the inventory
    compatible: int = 0  # of which compatible


def timestamp(epoch: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def plan(
    store: FeatureStore,
    nodes: Sequence[FleetNode],
    spec: Spec,
    skey: str,
    tags: Sequence[str],
    max_staleness: float,
    nfd_view: bool = False,
    grouped: bool = False,
) -> Plan:
    """Answer what the inventory can; the rest go to `live` (in the order given).

    Per node only the node's own fields are set on a copy of its group's template result (verdict,
    reasons, fingerprint built once per distinct set): ~3 us a node. `grouped` (the request's
    grouped_results) sends each template once with the nodes sharing it column by column
    (fleet.proto NodeGroup): no per-node message at all, ~1 us a node."""
    now = time.time()
    out = Plan()
    records = store.records_by_key([n.address for n in nodes])
    held: list[tuple[FleetNode, NodeRecord]] = []
    reps: dict[str, NodeRecord] = {}  # one node per distinct set: who is evaluated when identity is not read
    for node in nodes:
        rec = records.get(node.address)
        if rec is not None and rec.state == STATE_OK and rec.fingerprint and not (
            max_staleness > 0 and now - rec.probed_at > max_staleness
        ):  # usable: healthy stream (OK), features held, young enough (inline: runs once per node)
            held.append((node, rec))
            if rec.fingerprint not in reps:
                reps[rec.fingerprint] = rec
        else:
            out.live.append(node)
    per_node = reads_identity(spec)
    if per_node:  # the verdict may differ per node (system.name.nodename): one per node (cached per identity)
        verdicts = store.evaluate(spec, skey, [r for _, r in held], tags, nfd_view)
    else:
        by_key = store.evaluate(spec, skey, list(reps.values()), tags, nfd_view)
        by_fp = {fp: by_key[r.key] for fp, r in reps.items() if r.key in by_key}
    groups: dict[int, list[Any]] = {}  # id(verdict) -> [verdict, nodes]
    templates: dict[tuple[int, str], fleet_pb2.NodeResult] = {}
    failed_probe: dict[str, bool] = {}
    answered: list[tuple[FleetNode, NodeRecord, tuple[int, str]]] = []
    for node, rec in held:
        fp = rec.fingerprint
        v = verdicts.get(rec.key) if per_node else by_fp.get(fp)
        if v is None:  # the set left the store meanwhile
            out.live.append(node)
            continue
        tk = (id(v), fp)
        if tk not in templates:
            templates[tk] = fleet_pb2.NodeResult(
                compatible=v.compatible, score=v.score, status="OK",
                reasons=[] if v.compatible else failure_reasons(v), source=inventory_pb2.INVENTORY, fingerprint=fp,
            )
            groups.setdefault(id(v), [v, 0])
        groups[id(v)][1] += 1
        pf = failed_probe.get(fp)
        if pf is None:
            fs = store.feature_set(fp)
            pf = failed_probe[fp] = bool(fs is not None and fs.probe_failed)
        out.probe_failed += pf
        out.compatible += v.compatible
        answered.append((node, rec, tk))
    out.answered = len(answered)
    if grouped:
        _grouped(out, answered, templates)
    else:
        _per_node(out, answered, templates)
    out.groups = [(v, n) for v, n in groups.values()]
    out.distinct = len(failed_probe)
    return out


def _per_node(
    out: Plan, answered: list[tuple[FleetNode, NodeRecord, tuple[int, str]]],
    templates: dict[tuple[int, str], fleet_pb2.NodeResult],
) -> None:
    """One NodeResult per node (a copy of its template), BATCH to a message. Each protobuf attribute path is
    resolved once (the batch's `add`, the result's as_of): ~12-16% less time for 10,000 nodes (alternated
    A/B of plan(), medians of 15)."""
    results = out.results
    for node, rec, tk in answered:
        if len(results) % BATCH == 0:
            batch = fleet_pb2.ValidateFleetResponse()
            batch.nodes.SetInParent()
            add = batch.nodes.nodes.add
            out.batches.append(batch)
        r = add()
        r.CopyFrom(templates[tk])
        r.node_name = rec.name if node.source == SOURCE_DNS and rec.name else node.name
        r.address = node.address
        if node.labels:
            lab = r.labels
            for lk, lv in node.labels.items():
                lab[lk] = lv
        probed = rec.probed_at
        secs = int(probed)
        as_of = r.as_of
        as_of.seconds = secs
        as_of.nanos = int((probed - secs) * 1e9)
        results.append(r)


def _grouped(
    out: Plan, answered: list[tuple[FleetNode, NodeRecord, tuple[int, str]]],
    templates: dict[tuple[int, str], fleet_pb2.NodeResult],
) -> None:
    """NodeGroups messages of about GROUPED_BYTES each: per template the node columns, labels deduplicated
    per message (label_sets)."""
    cols: dict[tuple[int, str], tuple[list[str], list[str], list[float], list[int]]] = {}
    label_index: dict[int, int] = {}  # id(labels dict) -> index in this message
    label_sets: dict[tuple[tuple[str, str], ...], int] = {}
    template_bytes: dict[tuple[int, str], int] = {}
    size = 0

    def flush() -> None:
        nonlocal size
        if not cols:
            return
        msg = fleet_pb2.ValidateFleetResponse()
        ng = msg.groups
        for tk, (names, addresses, as_of, labels) in cols.items():
            g = ng.groups.add()
            g.result.CopyFrom(templates[tk])
            g.node_names.extend(names)
            g.addresses.extend(addresses)
            g.as_of_seconds.extend(as_of)
            g.label_sets.extend(labels)
        for items in label_sets:
            ng.label_sets.add().labels.update(items)
        out.batches.append(msg)
        cols.clear()
        label_index.clear()
        label_sets.clear()
        size = 0

    for node, rec, tk in answered:
        c = cols.get(tk)
        if c is None:
            c = cols[tk] = ([], [], [], [])
            tb = template_bytes.get(tk)
            if tb is None:
                tb = template_bytes[tk] = templates[tk].ByteSize() + 8
            size += tb  # each message carries its groups' shared results too (one per node when identity is read)
        name = rec.name if node.source == SOURCE_DNS and rec.name else node.name
        c[0].append(name)
        c[1].append(node.address)
        c[2].append(rec.probed_at)
        li = label_index.get(id(node.labels))
        if li is None:
            items = tuple(sorted(node.labels.items()))
            li = label_sets.get(items)
            if li is None:
                li = label_sets[items] = len(label_sets)
                size += sum(len(k) + len(v) + 8 for k, v in items)
            label_index[id(node.labels)] = li
        c[3].append(li)
        size += len(name) + len(node.address) + 16
        if size >= GROUPED_BYTES:
            flush()
    flush()


def expand_groups(groups: fleet_pb2.NodeGroups) -> list[fleet_pb2.NodeResult]:
    """The NodeResult of every node of a NodeGroups message (what a per-node answer would have carried)."""
    out = []
    sets = [dict(ls.labels) for ls in groups.label_sets]
    for g in groups.groups:
        for name, address, as_of, li in zip(g.node_names, g.addresses, g.as_of_seconds, g.label_sets, strict=True):
            r = fleet_pb2.NodeResult()
            r.CopyFrom(g.result)
            r.node_name = name
            r.address = address
            r.labels.update(sets[li])
            secs = int(as_of)  # as _per_node does
            r.as_of.seconds = secs
            r.as_of.nanos = int((as_of - secs) * 1e9)
            out.append(r)
    return out


def grouped_summary(summary: fleet_pb2.FleetSummary, inventory_plan: Plan | None) -> None:
    """With grouped_results: the inventory's answers (not in `results`) added to the counts summarize() made of
    the live ones, and no ranking (fleet.proto: a node's rank follows from its result)."""
    del summary.ranking[:]
    if inventory_plan is not None:
        summary.compatible += inventory_plan.compatible
        summary.incompatible += inventory_plan.answered - inventory_plan.compatible


def finish_summary(
    summary: fleet_pb2.FleetSummary,
    inventory_plan: Plan | None,
    live_reports: Sequence[Any],
    live_count: int,
) -> None:
    """Add the why-not counts (inventory groups + live reports), source counts and probe failures."""
    groups = list(inventory_plan.groups) if inventory_plan else []
    groups.extend((r, 1) for r in live_reports)
    for se in whynot.count(groups):
        summary.why_not.append(wire.to_message(se, inventory_pb2.SetExclusions))
    summary.from_inventory = inventory_plan.answered if inventory_plan else 0
    summary.live = live_count
    summary.probe_failed = (inventory_plan.probe_failed if inventory_plan else 0) + sum(
        1 for r in live_reports if list(r.unknown_facts)
    )
    summary.distinct_feature_sets = inventory_plan.distinct if inventory_plan else 0
