"""The live inventory shared out among aggregator replicas over etcd (issue 14): each node is watched
(WatchFeatures, server/inventory/inventory_sync.py) by exactly one live replica, and every replica answers for the
whole fleet from the features the others publish.

Membership: each replica holds one etcd lease (REPLICA_TTL, kept alive every third of it) and the key
P shards/replicas/ID on it; a replica that dies stops renewing, etcd expires the lease, and the key goes.
Assignment: rendezvous (highest-random-weight) hashing — a node belongs to the live replica with the highest
blake2b(replica id, node address); a replica's death moves only its own nodes (each to the survivor ranked
next for it), a new replica takes only the nodes it now ranks first for. Every replica computes the same
owner from the same replica set (a moment's disagreement while a change propagates through the watch costs
at most a duplicate or a missing subscription for that moment). Hand-written: it is a dozen lines of
hashing; no maintained library does rendezvous hashing over a dynamic etcd membership.

What the owner publishes, all on its replica lease (so it vanishes with the replica):
  P shards/nodes/ADDRESS    JSON {owner, name, fingerprint, identity, probed_at, round_id, state, error}
                            (< MAX_DOC_BYTES; rewritten when one of those changes, coalesced per PUBLISH_INTERVAL,
                            and when the watch shows it deleted or overwritten by another writer)
  P shards/sets/FP/ID       the canonical feature set (nodecompat/fleet/fingerprint.py: sha256 of these bytes
                            is FP), one copy per owning replica, written once, deleted when none of its nodes
                            uses it; at most MAX_SET_BYTES (a larger set is not shared: others answer it live)
Readers watch P shards/replicas/ and P shards/nodes/ and put each foreign node into their own FeatureStore
(a set fetched once per fingerprint, and checked against it), so ValidateFleet through any replica answers
every node from the inventory; they refresh those records while the owner's document is there (the owner
vouches for the stream), so the local stale timer does not fire on nodes this replica does not watch.
What a reader believes: only keys bound to a lease (etcd_kv leased_only: a replica key or document written
without one would never vanish, so it is treated as absent), only documents whose owner is a live replica,
and no probed_at that is not finite or lies more than MAX_CLOCK_SKEW ahead (it would never go stale).

Takeover: when an owner dies its documents go with its lease; the survivor that now ranks first
subscribes, sending the fingerprint it already holds (the daemon answers with a heartbeat, no features),
and publishes. Bound: REPLICA_TTL + the watch (< 1 s) + one reconcile (SyncConfig.reconcile_interval) + one
stream set-up. Meanwhile every replica keeps answering the node from what it holds.

etcd outage: membership is frozen as last seen (no takeover can be decided), publishing is retried, foreign
records are kept fresh from the last documents (the replicas keep answering what they hold); when etcd
returns, a lapsed replica lease is granted again and everything owned is published again. At start with
etcd unreachable a replica owns every node (it alone answers for the fleet until it sees the others).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable

from etcd3gw.utils import _encode

from nodecompat.fleet.fingerprint import with_identity
from nodecompat.fleet.store import STATE_OK, FeatureStore, NodeRecord, StoreFull
from nodecompat.server.inventory.etcd_kv import EtcdEndpoints, PrefixWatch
from nodecompat.server.inventory.fleet_members import SOURCE_DNS, FleetNode
from nodecompat.server.inventory.registration_store import StoreUnavailable
from nodecompat.server.inventory.shard_docs import (
    MAX_DOC_BYTES,
    MAX_SET_BYTES,
    NodeDoc,
    decode_set,
    doc_of,
    encode_set,
    rendezvous_owner,
)

__all__ = ["MAX_DOC_BYTES", "MAX_SET_BYTES", "REPLICA_TTL", "InventoryShards", "NodeDoc", "rendezvous_owner"]

log = logging.getLogger(__name__)

REPLICA_TTL = 5  # seconds: a dead replica's nodes are taken over about this long after it stops renewing
MAX_CLOCK_SKEW = 300.0  # seconds a foreign document's probed_at may lie ahead of this replica's clock
PUBLISH_INTERVAL = 0.5  # seconds between publishing rounds (changes within one are coalesced)


class InventoryShards:
    """This replica's share of the inventory. `subscribed(members)` is the filter InventorySync subscribes
    through; start() before InventorySync starts, stop() before it stops."""

    def __init__(self, etcd: EtcdEndpoints, prefix: str, members: Callable[[], list[FleetNode]],
                 store: FeatureStore, *, replica_id: str = "", stale_timeout: float = 31.0,
                 replica_ttl: int = REPLICA_TTL,
                 on_reported_name: Callable[[str, str], None] | None = None) -> None:
        self.etcd = etcd
        self.prefix = (prefix if prefix.endswith("/") else prefix + "/") + "shards/"
        self.members = members
        self.store = store
        self.id = replica_id or uuid.uuid4().hex[:16]
        self.stale_timeout = stale_timeout
        self.replica_ttl = replica_ttl
        self.on_reported_name = on_reported_name
        self._lock = threading.Lock()
        self._replicas: frozenset[str] = frozenset({self.id})
        self._owners: dict[str, str] = {}  # address -> owner under _replicas (a cache)
        self._owned_since: dict[str, float] = {}  # address -> time.monotonic() it became this replica's
        self._docs: dict[str, NodeDoc] = {}  # address -> the other owners' documents
        self._published: dict[str, NodeDoc] = {}  # address -> what this replica last wrote
        self._sets_published: set[str] = set()  # fingerprints of this replica's set copies
        self._refreshed: dict[str, float] = {}  # address -> when a foreign record was last refreshed
        self._lease = 0
        self._lease_renewed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watches = [
            PrefixWatch(etcd, self.prefix + "replicas/", self._load_replicas, self._replica_event,
                        name="shards-replicas", leased_only=True),
            PrefixWatch(etcd, self.prefix + "nodes/", self._load_docs, self._doc_event, name="shards-nodes",
                        leased_only=True),
        ]
        self.takeovers = 0  # nodes that became this replica's while it was running

    # -- keys --------------------------------------------------------------------------------------
    def _replica_key(self, rid: str) -> str:
        return f"{self.prefix}replicas/{rid}"

    def _doc_key(self, address: str) -> str:
        return f"{self.prefix}nodes/{address}"

    def _set_key(self, fp: str, rid: str) -> str:
        return f"{self.prefix}sets/{fp}/{rid}"

    # -- ownership ---------------------------------------------------------------------------------
    def replicas(self) -> frozenset[str]:
        with self._lock:
            return self._replicas

    def owner(self, address: str) -> str:
        with self._lock:
            o = self._owners.get(address)
            if o is None:
                o = self._owners[address] = rendezvous_owner(address, self._replicas)
            return o

    def subscribed(self, members: list[FleetNode]) -> list[FleetNode]:
        """The members this replica watches (InventorySync's membership filter)."""
        now = time.monotonic()
        with self._lock:
            if len(self._owners) > 2 * len(members) + 1024:  # addresses that left the fleet
                self._owners.clear()
        out = [n for n in members if self.owner(n.address) == self.id]
        with self._lock:
            mine = {n.address for n in out}
            for a in [a for a in self._owned_since if a not in mine]:
                del self._owned_since[a]
            for a in mine - self._owned_since.keys():
                self._owned_since[a] = now
                self.takeovers += 1
        return out

    def _set_replicas(self, replicas: set[str]) -> None:
        with self._lock:
            new = frozenset(replicas | {self.id})
            if new != self._replicas:
                log.info("inventory shards: replicas %s (this one %s)", sorted(new), self.id)
                self._replicas = new
                self._owners.clear()

    def _load_replicas(self, kvs: list[tuple[str, bytes]]) -> None:
        self._set_replicas({k.rsplit("/", 1)[1] for k, _ in kvs})

    def _replica_event(self, key: str, _value: bytes, deleted: bool) -> None:
        rid = key.rsplit("/", 1)[1]
        with self._lock:
            current = set(self._replicas)
        (current.discard if deleted else current.add)(rid)
        self._set_replicas(current)

    # -- the other owners' documents ---------------------------------------------------------------
    def _load_docs(self, kvs: list[tuple[str, bytes]]) -> None:
        docs, mine = {}, set()
        for key, raw in kvs:
            doc = self._decode(key, raw)
            if doc is not None and doc.owner != self.id:
                docs[key[len(self.prefix) + 6:]] = doc
            elif doc is not None:
                mine.add(key[len(self.prefix) + 6:])
        with self._lock:
            self._docs = docs
            for address in [a for a in self._published if a not in mine]:  # not in etcd as written: write again
                del self._published[address]

    def _doc_event(self, key: str, raw: bytes, deleted: bool) -> None:
        address = key[len(self.prefix) + 6:]
        doc = None if deleted else self._decode(key, raw)
        with self._lock:
            if doc is None or doc.owner == self.id:
                self._docs.pop(address, None)
            else:
                self._docs[address] = doc
            if doc is None or doc.owner != self.id:
                # deleted or overwritten (e.g. a former owner's late write, then its delete): written again by
                # the next _publish while the node is this replica's (else the others lost it for good)
                self._published.pop(address, None)

    @staticmethod
    def _decode(key: str, raw: bytes) -> NodeDoc | None:
        try:
            return NodeDoc.decode(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("inventory shards: %s unreadable, ignored: %s", key[:200], exc)
            return None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Join (lease + replica key) and read the replica set once, so the first reconcile already
        subscribes to this replica's share only; etcd unreachable: start owning everything, join later."""
        try:
            self._join()
            kvs, _rev = self.etcd.range_prefix(self.prefix + "replicas/", leased_only=True)
            self._load_replicas(kvs)
        except StoreUnavailable as exc:
            log.warning("inventory shards: etcd unreachable at start (%s); watching every node until it answers", exc)
        for w in self._watches:
            w.start()
        self._thread = threading.Thread(target=self._loop, name="inventory-shards", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Leave: revoke the lease, so this replica's nodes are taken over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for w in self._watches:
            w.stop()
        if self._lease:
            self.etcd.revoke(self._lease)
            self._lease = 0

    def _join(self) -> None:
        lease = self.etcd.grant(self.replica_ttl)
        try:
            self.etcd.put_many([(self._replica_key(self.id), json.dumps({"id": self.id}).encode(), lease)])
        except StoreUnavailable:
            self.etcd.revoke(lease)
            raise
        self._lease = lease
        self._lease_renewed = time.monotonic()
        with self._lock:  # a new lease: nothing of this replica is in etcd any more
            self._published.clear()
            self._sets_published.clear()

    def _keep_lease(self) -> None:
        if not self._lease:
            self._join()
            return
        if time.monotonic() - self._lease_renewed < self.replica_ttl / 3:
            return
        if self.etcd.keepalive(self._lease) > 0:
            self._lease_renewed = time.monotonic()
        else:
            log.warning("inventory shards: replica lease %x lapsed; joining again", self._lease)
            self._join()

    def _loop(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL):
            try:
                self._keep_lease()
                self._publish()
            except StoreUnavailable as exc:
                log.debug("inventory shards: etcd unreachable: %s", exc)
            except Exception:
                log.exception("inventory shards: publishing failed")
            try:
                self._apply_foreign()
            except Exception:
                log.exception("inventory shards: applying other replicas' nodes failed")

    # -- publishing this replica's nodes -----------------------------------------------------------
    def _publish(self) -> None:
        with self._lock:
            owned = dict(self._owned_since)
            published = dict(self._published)
        records = self.store.records_by_key(owned)
        puts: list[tuple[str, bytes, int]] = []
        new_docs: dict[str, NodeDoc] = {}
        wanted_sets: set[str] = set()
        for address, since in owned.items():
            rec = records.get(address)
            if rec is None or not rec.fingerprint or (rec.heard_at < since and rec.state == STATE_OK):
                continue  # not heard through this replica's own stream yet
            doc = doc_of(self.id, rec)
            wanted_sets.add(doc.fingerprint)
            if published.get(address) != doc:
                new_docs[address] = doc
        set_puts = []
        for fp in wanted_sets - self._sets_published:
            fs = self.store.feature_set(fp)
            if fs is None:
                continue
            raw = encode_set(fs.features, fs.unknown)
            if len(raw) <= MAX_SET_BYTES:
                set_puts.append((self._set_key(fp, self.id), raw, self._lease))
        for address, doc in new_docs.items():
            raw = doc.encode()
            if len(raw) <= MAX_DOC_BYTES:
                puts.append((self._doc_key(address), raw, self._lease))
        gone = [a for a in published if a not in owned]
        unused = [fp for fp in self._sets_published - wanted_sets
                  if not any(d.fingerprint == fp for a, d in published.items() if a in owned)]
        if set_puts:  # the sets first: a reader fetches a node's set when it sees the node
            self.etcd.put_many(set_puts)
            self._sets_published.update(k.split("/")[-2] for k, _, _ in set_puts)
        with self._lock:  # noted before the put: the watch may hear an overwrite as soon as the put lands
            self._published.update(new_docs)
        if puts:
            try:
                self.etcd.put_many(puts)
            except BaseException:
                with self._lock:  # not written: written at the next pass
                    for address in [a for a, d in new_docs.items() if self._published.get(a) is d]:
                        del self._published[address]
                raise
        for address in gone:  # no longer this replica's: delete its document unless the new owner rewrote it
            key = self._doc_key(address)
            self.etcd.txn({"compare": [{"key": _encode(key), "result": "EQUAL", "target": "LEASE",
                                        "lease": self._lease}],
                           "success": [{"request_delete_range": {"key": _encode(key)}}], "failure": []})
            with self._lock:
                self._published.pop(address, None)
        if unused:
            self.etcd.put_many([], [self._set_key(fp, self.id) for fp in unused])
            self._sets_published.difference_update(unused)

    # -- the others' nodes in this replica's store -------------------------------------------------
    def _apply_foreign(self) -> None:
        records = self.store.records()  # before the membership: a record is made only for a member
        members = {n.address: n for n in self.members()}
        with self._lock:
            docs = dict(self._docs)
            owned = set(self._owned_since)
            live = self._replicas
        for old in records:  # nodes that left the fleet (InventorySync removes its own)
            if old.key not in members and old.key not in owned:
                self.store.remove(old.key)
                self._refreshed.pop(old.key, None)
        now = time.monotonic()
        latest = time.time() + MAX_CLOCK_SKEW
        for address, doc in docs.items():
            node = members.get(address)
            if node is None or doc.owner not in live or doc.probed_at > latest:
                continue  # only a live replica's word, and no probe time from the future (it would never go stale)
            rec = self.store.get(address)
            if address in owned and rec is not None:
                continue  # this replica's own stream decides (a document only seeds a takeover)
            try:
                self._apply_doc(node, doc, rec, now)
            except StoreUnavailable as exc:
                log.debug("inventory shards: set of %s not fetched: %s", address, exc)

    def _apply_doc(self, node: FleetNode, doc: NodeDoc, rec: NodeRecord | None, now: float) -> None:
        address = node.address
        # the record holds the document's set when the fingerprints agree, or when the document's is the one the
        # set was announced under (a replica from before volatile values: usage values in, NodeRecord.announced)
        if doc.fingerprint and (rec is None or doc.fingerprint not in (rec.fingerprint, rec.announced)):
            if not self._put_features(node, doc):
                return
            rec = self.store.get(address)
            self._refreshed[address] = now
        if rec is None:
            return
        if doc.state != STATE_OK:
            if rec.state != doc.state:
                self.store.set_state(address, doc.name, doc.state, doc.error)
            return
        if (rec.state != STATE_OK or rec.probed_at < doc.probed_at
                or now - self._refreshed.get(address, 0.0) > self.stale_timeout / 4):
            self.store.heartbeat(address, doc.round_id, doc.fingerprint, probed_at=doc.probed_at)
            self._refreshed[address] = now

    def _put_features(self, node: FleetNode, doc: NodeDoc) -> bool:
        """Put the node with the document's feature set (held, or fetched from etcd once); False when the set
        cannot be had (the node is then answered live)."""
        labels = dict(node.labels)
        alias = "etcd:" + doc.fingerprint
        if self.store.put_known(alias, node.address, doc.name, doc.identity, doc.probed_at, doc.round_id,
                                labels, announced=doc.fingerprint) is not None:
            self._reported(node, doc)
            return True
        fs = self.store.feature_set(doc.fingerprint)
        if fs is not None:
            features, unknown = fs.features, dict(fs.unknown)
        else:
            kvs, _rev = self.etcd.range_prefix(f"{self.prefix}sets/{doc.fingerprint}/", limit=1)
            if not kvs:
                return False
            try:
                features, unknown = decode_set(kvs[0][1], doc.fingerprint)
            except ValueError as exc:
                log.warning("inventory shards: feature set %s ignored: %s", doc.fingerprint[:80], exc)
                return False
        try:
            self.store.put(node.address, doc.name, with_identity(features, doc.identity), unknown, doc.probed_at,
                           doc.round_id, labels=labels, fingerprint=doc.fingerprint, wire_key=alias)
        except StoreFull as exc:
            log.warning("inventory shards: %s", exc)
            return False
        self._reported(node, doc)
        return True

    def _reported(self, node: FleetNode, doc: NodeDoc) -> None:
        if node.source == SOURCE_DNS and doc.name and self.on_reported_name is not None:
            self.on_reported_name(node.address, doc.name)

    # -- introspection (tests, benches) ------------------------------------------------------------
    def owned(self) -> set[str]:
        """Addresses this replica watches now."""
        with self._lock:
            return set(self._owned_since)
