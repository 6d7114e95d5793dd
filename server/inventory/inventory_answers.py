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
from nodecompat.server.fleet.fleet_bytes import NodeBytes, Ranking, Verdict, node_messages
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.v1 import fleet_pb2, inventory_pb2

BATCH = 1000  # inventory answers per ValidateFleetResponse (one NodeResult per node)
GROUPED_BYTES = 1 << 20  # about this many bytes of node fields and shared results per grouped ValidateFleetResponse


@dataclass
class Plan:
    # the messages to send: serialized (one NodeResult per node) or NodeGroups messages (grouped)
    batches: list[fleet_pb2.ValidateFleetResponse | bytes] = field(default_factory=list)
    # the summary's ranking of the answered nodes, and of the live ones once added (per node; empty when grouped)
    ranking: Ranking = field(default_factory=Ranking)
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
    node_bytes: NodeBytes | None = None,
) -> Plan:
    """Answer what the inventory can; the rest go to `live` (in the order given).

    Per node its result's bytes are its own fields' (kept in `node_bytes` per node, its as_of the record's: a
    fresh NodeBytes when None) joined with its group's template's (verdict, reasons, fingerprint:
    serialized once per distinct set), server/fleet/fleet_bytes.py: ~1 us a node. `grouped` (the request's
    grouped_results) sends each template once with the nodes sharing it column by column
    (fleet.proto NodeGroup): no per-node message at all, ~1 us a node."""
    out = Plan(ranking=Ranking(keep=not grouped))
    now = time.time()
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
    counts: dict[tuple[int, str], list[Any]] = {}  # template key -> [verdict, nodes]: the counts added once per key
    answered: list[tuple[FleetNode, NodeRecord, tuple[int, str]]] = []
    for node, rec in held:
        fp = rec.fingerprint
        v = verdicts.get(rec.key) if per_node else by_fp.get(fp)
        if v is None:  # the set left the store meanwhile
            out.live.append(node)
            continue
        tk = (id(v), fp)
        c = counts.get(tk)
        if c is None:
            templates[tk] = fleet_pb2.NodeResult(
                compatible=v.compatible, score=v.score, status="OK",
                reasons=[] if v.compatible else failure_reasons(v), source=inventory_pb2.INVENTORY, fingerprint=fp,
            )
            c = counts[tk] = [v, 0]
        c[1] += 1
        answered.append((node, rec, tk))
    failed_probe: dict[str, bool] = {}
    for (_, fp), (v, n) in counts.items():
        groups.setdefault(id(v), [v, 0])[1] += n
        pf = failed_probe.get(fp)
        if pf is None:
            fs = store.feature_set(fp)
            pf = failed_probe[fp] = bool(fs is not None and fs.probe_failed)
        out.probe_failed += pf * n
        out.compatible += v.compatible * n
    out.answered = len(answered)
    if grouped:
        _grouped(out, answered, templates)
    else:  # pre-serialized pieces (server/fleet/fleet_bytes.py)
        verdict_bytes = {tk: Verdict(t) for tk, t in templates.items()}
        out.batches.extend(node_messages(answered, verdict_bytes, node_bytes or NodeBytes(), out.ranking, BATCH))
    out.groups = [(v, n) for v, n in groups.values()]
    out.distinct = len(failed_probe)
    return out


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
