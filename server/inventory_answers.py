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
from nodecompat.fleet.store import STATE_OK, FeatureStore, NodeRecord
from nodecompat.server.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.v1 import fleet_pb2, inventory_pb2


@dataclass
class Plan:
    results: list[fleet_pb2.NodeResult] = field(default_factory=list)
    live: list[FleetNode] = field(default_factory=list)
    # (verdict, nodes sharing it) for the why-not counts
    groups: list[tuple[Any, int]] = field(default_factory=list)
    probe_failed: int = 0
    distinct: int = 0


def usable(rec: NodeRecord | None, max_staleness: float, now: float) -> bool:
    """Whether a node's inventory entry may answer: healthy stream, features held, young enough."""
    if rec is None or not rec.has_features or rec.state != STATE_OK:
        return False
    return not (max_staleness > 0 and now - rec.probed_at > max_staleness)


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
) -> Plan:
    """Answer what the inventory can; the rest go to `live` (in the order given)."""
    now = time.time()
    out = Plan()
    held: list[tuple[FleetNode, NodeRecord]] = []
    for node in nodes:
        rec = store.get(node.address)
        if rec is not None and usable(rec, max_staleness, now):
            held.append((node, rec))
        else:
            out.live.append(node)
    verdicts = store.evaluate(spec, skey, [r for _, r in held], tags, nfd_view)
    per_verdict: dict[int, list[Any]] = {}
    fingerprints: set[str] = set()
    for node, rec in held:
        v = verdicts.get(rec.key)
        if v is None:  # the set left the store meanwhile
            out.live.append(node)
            continue
        fingerprints.add(rec.fingerprint)
        entry = per_verdict.setdefault(id(v), [v, 0, None])
        entry[1] += 1
        if entry[2] is None:
            entry[2] = failure_reasons(v) if not v.compatible else []
        fs = store.feature_set(rec.fingerprint)
        if fs is not None and fs.probe_failed:
            out.probe_failed += 1
        name = rec.name if node.source == SOURCE_DNS and rec.name else node.name
        out.results.append(
            fleet_pb2.NodeResult(
                node_name=name,
                address=node.address,
                labels=dict(node.labels),
                compatible=v.compatible,
                score=v.score,
                status="OK",
                reasons=entry[2],
                as_of=timestamp(rec.probed_at),
                source=inventory_pb2.INVENTORY,
                fingerprint=rec.fingerprint,
            )
        )
    out.groups = [(v, n) for v, n, _ in per_verdict.values()]
    out.distinct = len(fingerprints)
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
    summary.from_inventory = len(inventory_plan.results) if inventory_plan else 0
    summary.live = live_count
    summary.probe_failed = (inventory_plan.probe_failed if inventory_plan else 0) + sum(
        1 for r in live_reports if list(r.unknown_facts)
    )
    summary.distinct_feature_sets = inventory_plan.distinct if inventory_plan else 0
