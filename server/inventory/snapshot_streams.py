"""Streamed nodes in the inventory snapshot, and holding any snapshot node's features again.

Nodes of the nodes file or DNS are kept by their WatchFeatures stream (server/inventory/inventory_sync.py), not by
a lease. The snapshot (server/inventory/inventory_snapshot.py) writes them beside the registered ones
(SnapshotNode.streamed: name, address, labels, fingerprint, identity, round id, probe time, the health last seen,
and the fingerprint the daemon itself announced when it differs; the feature sets are shared with the registered
nodes' ones). On load a streamed entry is held at once, with its as_of, only while its address is still listed by
the nodes file or DNS, which are the truth for membership: a node no longer listed is dropped, a renamed one takes
the file's name and labels (a DNS node keeps the name its daemon reported). Its STALE counts heartbeat silence from
the load (the record's heard_at is the load), as for a restored registered node. The same untrusted-input checks
apply (push_problem: fingerprint, identity, probe time; the name's rules; the set's digest); an address listed
twice in the file is held once. There are at most as many as the nodes file and DNS list (the reader's entry
bound counts them: read_bound).

Its subscription then starts as a reconnect does: InventorySync sends the fingerprint held as
WatchFeaturesRequest.known_fingerprint, so an unchanged daemon answers features_omitted (no features parsed on
either side) and a changed one sends its features, which replace the restored ones as any change does.

Hand-written: glue between the snapshot file, the membership and the feature store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from nodecompat.features import Features
from nodecompat.fleet.fingerprint import with_identity
from nodecompat.fleet.store import FeatureStore, NodeRecord, StoreFull
from nodecompat.server.inventory.fleet_members import SOURCE_DNS, SOURCE_FILE, FleetNode, name_problem
from nodecompat.server.inventory.inventory_push import FINGERPRINT_RE
from nodecompat.v1 import fleet_pb2, snapshot_pb2

if TYPE_CHECKING:
    from nodecompat.server.inventory.fleet_nodes import NodeInventory

Sets = dict[str, tuple[Features, dict[str, str]]]
Drop = Callable[[str, str], None]


def listed(inventory: NodeInventory, exclude: set[str] | None = None) -> dict[str, FleetNode]:
    """address -> node of every current member that comes from the nodes file or DNS (not a registration), less
    the addresses in `exclude`."""
    skip = exclude or set()
    return {n.address: n for n in inventory.nodes() if n.source in (SOURCE_FILE, SOURCE_DNS) and n.address not in skip}


def read_bound(inventory: NodeInventory) -> int:
    """How many sets and nodes a snapshot may hold for this aggregator: twice --max-registrations (registered) plus
    the nodes the nodes file and DNS list now (streamed); snapshot_read.bounded's max_entries."""
    return 2 * inventory.max_registrations + len(listed(inventory))


def collect_streamed(inventory: NodeInventory, store: FeatureStore, snap: snapshot_pb2.InventorySnapshot,
                     written: set[str], healths: dict[str, str]) -> set[str]:
    """Add to `snap` every nodes-file / DNS node whose features `store` holds (not the addresses in `written`: the
    registered ones); the fingerprints they use."""
    members = listed(inventory, written)
    used: set[str] = set()
    for address, rec in store.records_by_key(members).items():
        if not rec.has_features:
            continue
        entry = snap.nodes.add(name=rec.name, address=address, fingerprint=rec.fingerprint, round_id=rec.round_id,
                               streamed=True, announced=rec.announced,
                               health="SERVING" if healths.get(address) == "SERVING" else "")
        entry.labels.update(members[address].labels)
        whole = int(rec.probed_at // 1)
        entry.probed_at.seconds, entry.probed_at.nanos = whole, int((rec.probed_at - whole) * 1e9)
        entry.probed_at_seconds = rec.probed_at
        for feature, element, value in rec.identity:
            entry.identity[feature].elements[element] = value
        used.add(rec.fingerprint)
    return used


def probed_at(node: snapshot_pb2.SnapshotNode, req: fleet_pb2.RegisterNodeRequest) -> float:
    """The entry's probe time (epoch seconds): probed_at_seconds bit for bit when within 1 µs of the checked
    Timestamp (NaN or far off: the Timestamp's); 0.0 without one."""
    probed = req.probed_at.ToNanoseconds() / 1e9 if req.HasField("probed_at") else 0.0
    return node.probed_at_seconds if abs(node.probed_at_seconds - probed) < 1e-6 else probed


def hold(store: FeatureStore, node: snapshot_pb2.SnapshotNode, req: fleet_pb2.RegisterNodeRequest, sets: Sets,
         placed: dict[str, str], name: str, labels: dict[str, str], announced: str) -> NodeRecord | tuple[str, str]:
    """Put a snapshot node's features into `store` (its set from `sets`, parsed once: the next node of the same
    fingerprint is placed by it, `placed`: the file's fingerprint -> the store's); its record, or (why it is not
    held, an example for the log). `req`: the entry as a checked RegisterNodeRequest (push_problem passed);
    `announced`: the fingerprint the node gave its set (NodeRecord.announced when it differs)."""
    fp = node.fingerprint
    probed = probed_at(node, req)
    identity = tuple(sorted((f, e, v) for f, a in node.identity.items() for e, v in a.elements.items()))
    try:
        if fp in placed:
            rec = store.put_fingerprint(placed[fp], node.address, name, identity, probed, node.round_id, labels,
                                        announced=announced)
        else:
            features, unknown = sets[fp]
            rec = store.put(node.address, name, with_identity(features, identity), unknown, probed, node.round_id,
                            labels=labels, fingerprint=announced)
    except StoreFull as exc:
        return "feature store full", str(exc)
    if rec is None or rec.fingerprint != placed.get(fp, rec.fingerprint):  # cannot happen; never held wrongly
        if rec is not None:
            store.remove(node.address)
        return "feature set not held", name
    placed[fp] = rec.fingerprint
    return rec


def restore_streamed(node: snapshot_pb2.SnapshotNode, req: fleet_pb2.RegisterNodeRequest, members: dict[str, FleetNode],
                     inventory: NodeInventory, store: FeatureStore | None, sets: Sets, placed: dict[str, str],
                     at: datetime, drop: Drop) -> bool:
    """Hold one streamed snapshot entry (module doc); `members`: listed()'s nodes not held yet (the one taken is
    removed), `at`: the snapshot's time (its health's date). False, with the reason given to `drop`, when not held."""
    if store is None:
        drop("streamed node: this aggregator keeps no inventory (no streams)", node.name)
        return False
    if not node.fingerprint:
        drop("streamed node without a feature set", node.name)
        return False
    member = members.pop(node.address, None)
    if member is None:
        drop("streamed node whose address the nodes file and DNS no longer list (or listed twice in the file)",
             node.address)
        return False
    if node.announced and not FINGERPRINT_RE.match(node.announced):
        drop("announced fingerprint must be 'sha256:' followed by 64 lowercase hex digits", node.name)
        return False
    name = member.name  # the nodes file is the truth (a renamed node follows it)
    reported = ""
    if member.source == SOURCE_DNS and node.name != member.address:  # DNS knows addresses; the daemon its name
        if problem := name_problem(node.name):
            drop(f"name {problem}", node.name)
            return False
        name = reported = node.name
    got = hold(store, node, req, sets, placed, name, dict(member.labels), node.announced or node.fingerprint)
    if isinstance(got, tuple):
        drop(*got)
        return False
    if node.health == "SERVING" or reported:
        inventory.restore_contact(node.address, "SERVING" if node.health == "SERVING" else "UNKNOWN", at,
                                  reported_name=reported)
    return True


__all__ = ["collect_streamed", "hold", "listed", "probed_at", "read_bound", "restore_streamed"]
