"""The inventory store: each node's latest features with their probe time and where they came from,
each distinct feature set stored once and shared by every node with the same fingerprint.

A node record is a few hundred bytes (name, address, fingerprint, identity attributes, times, state);
the feature sets — tens to hundreds of KiB each — live once per fingerprint with a reference count, and
go when their last node leaves. A spec is evaluated once per distinct set (verified homogeneous group),
plus once per node only when the spec reads an identity attribute (system.name.nodename). Volatile elements
(usage values: nodecompat/fleet/volatile.py) are never stored; a spec reading one is answered live. Bounded:
at most `max_set_bytes` of canonical feature sets; a node whose new set does not fit is refused
(StoreFull) and the caller answers it live instead. Thread-safe (one lock; evaluation happens outside it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import Spec
from nodecompat.engine.verdict import Verdict
from nodecompat.features import Features
from nodecompat.fleet.fingerprint import IDENTITY, canonical_bytes, split_identity, with_identity
from nodecompat.fleet.timestamp_wire import timestamp_bytes
from nodecompat.fleet.volatile import strip_volatile

MAX_SET_BYTES = 256 << 20  # canonical bytes of all distinct feature sets together
MAX_VERDICTS = 4096  # cached verdicts, keyed by (spec, tags, feature set)
MAX_ALIASES = 65536  # wire form -> fingerprint entries (~250 bytes each): store._alias

STATE_OK = "OK"
STATE_STALE = "STALE"
STATE_UNREACHABLE = "UNREACHABLE"


def _not_after_now(probed_at: float) -> float:
    """A node's probe time (epoch seconds) as stored: never later than now. The time comes from the node
    (its stream, its registration heartbeats): one in the future (a wrong clock, a hostile registrant)
    would keep the node's features fresh for every max_staleness, for good (heartbeat keeps the latest),
    and one past year 9999 is no Timestamp a client can read. NaN is taken as now too."""
    now = time.time()
    return probed_at if probed_at <= now else now


class StoreFull(Exception):
    """A new distinct feature set would pass the store's byte budget."""


@dataclass(slots=True)
class FeatureSet:
    fingerprint: str
    features: Features  # identity attributes left out
    unknown: dict[str, str]
    size: int  # canonical bytes
    nodes: int = 0

    @property
    def probe_failed(self) -> bool:
        return bool(self.unknown)


@dataclass(slots=True, frozen=True)
class NodeRecord:
    key: str  # the node's address: membership's key
    name: str
    fingerprint: str = ""
    identity: tuple[tuple[str, str, str], ...] = ()
    probed_at: float = 0.0  # epoch seconds of the probe round
    round_id: int = 0
    heard_at: float = 0.0  # time.monotonic() of the last message (features or heartbeat)
    state: str = STATE_OK
    error: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    # the fingerprint the node itself gave this set when it differs from `fingerprint`: a daemon from before
    # volatile values (nodecompat/fleet/volatile.py) computes it over its usage values too. Its heartbeats
    # name that one; it is the same set, so they renew the record (else every beat refetched it, for good).
    announced: str = ""
    # probed_at as a serialized Timestamp (nodecompat/fleet/timestamp_wire.py), written with the record: an
    # answer copies it, encoding nothing per node a round later (server/fleet/fleet_bytes.py)
    as_of: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        object.__setattr__(self, "as_of", timestamp_bytes(self.probed_at))

    @property
    def has_features(self) -> bool:
        return bool(self.fingerprint)


Listener = Callable[[NodeRecord | None, NodeRecord | None], None]
_VerdictKey = tuple[str, tuple[str, ...], str, tuple[tuple[str, str, str], ...]]


@dataclass
class _Stats:
    evaluations: int = 0
    cache_hits: int = 0
    refused: int = 0


def spec_key(text: str, nfd_compat: bool) -> str:
    """A cache key for a spec: sha256 of its text and mode."""
    return hashlib.sha256(f"{int(nfd_compat)}\0{text}".encode()).hexdigest()


def reads_identity(spec: Spec) -> bool:
    """Whether some term of `spec` reads a feature carrying identity attributes (system.name)."""
    ident = set(IDENTITY)
    for c in spec.compatibilities:
        for r in c.rules:
            terms = list(r.match_features) + [t for a in r.match_any for t in a.match_features]
            if any(t.feature.lower() in ident for t in terms):
                return True
    return False


class FeatureStore:
    def __init__(self, max_set_bytes: int = MAX_SET_BYTES, max_verdicts: int = MAX_VERDICTS) -> None:
        self.max_set_bytes = max_set_bytes
        self.max_verdicts = max_verdicts
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._sets: dict[str, FeatureSet] = {}
        self._bytes = 0
        self._verdicts: OrderedDict[_VerdictKey, Verdict] = OrderedDict()  # (spec key, tags, fingerprint, identity)
        # sha256 of a sender's wire form (identity stripped) -> fingerprint, so a known set is not re-parsed
        self._aliases: dict[str, str] = {}
        self.listeners: list[Listener] = []
        self.stats = _Stats()
        # bumped by every write, heartbeats included (a snapshot writer compares it: "did anything change?")
        self.generation = 0

    # -- writing -----------------------------------------------------------------------------------
    def put(
        self,
        key: str,
        name: str,
        features: Features,
        unknown: Mapping[str, str] | None,
        probed_at: float,
        round_id: int,
        labels: Mapping[str, str] | None = None,
        fingerprint: str | None = None,
        wire_key: str = "",
    ) -> NodeRecord:
        """Store a node's new probe round. Returns the new record; StoreFull when a new set does not fit.

        `fingerprint` may be passed when the sender computed it (it is recomputed here either way: a
        daemon's claim decides nothing; one that differs is kept as NodeRecord.announced, so that the
        sender's heartbeats naming it renew the record)."""
        shared, identity = split_identity(strip_volatile(features))  # the profile: no usage values kept
        unk = dict(unknown or {})
        raw = canonical_bytes(shared, unk)
        fp = "sha256:" + hashlib.sha256(raw).hexdigest()
        with self._lock:
            old = self._nodes.get(key)
            fs = self._sets.get(fp)
            if fs is None:
                prev = self._sets.get(old.fingerprint) if old is not None else None
                freed = prev.size if prev is not None and prev.nodes == 1 else 0
                if self._bytes - freed + len(raw) > self.max_set_bytes:
                    self.stats.refused += 1
                    raise StoreFull(
                        f"the inventory holds {self._bytes} bytes of feature sets (limit {self.max_set_bytes}); "
                        f"{name}'s new set of {len(raw)} bytes is answered live instead"
                    )
                fs = self._sets[fp] = FeatureSet(fp, shared, unk, len(raw))
                self._bytes += len(raw)
            fs.nodes += 1
            if wire_key:
                self._alias(wire_key, fp)
            if old is not None and old.has_features:
                self._release(old.fingerprint)
            new = NodeRecord(
                key=key,
                name=name,
                fingerprint=fp,
                identity=identity,
                probed_at=_not_after_now(probed_at),
                round_id=round_id,
                heard_at=time.monotonic(),
                state=STATE_OK,
                labels=tuple(sorted((labels or (old and dict(old.labels)) or {}).items())),
                announced=fingerprint if fingerprint and fingerprint != fp else "",
            )
            self._nodes[key] = new
            self.generation += 1
        self._notify(old, new)
        return new

    def put_known(
        self,
        wire_key: str,
        key: str,
        name: str,
        identity: tuple[tuple[str, str, str], ...],
        probed_at: float,
        round_id: int,
        labels: Mapping[str, str] | None = None,
        announced: str = "",
    ) -> NodeRecord | None:
        """Store a round whose wire form (identity stripped) was seen before: no parsing. None when the
        wire key is unknown (the caller then parses and calls put with wire_key). `announced`: the
        fingerprint the sender gave (as put's `fingerprint`)."""
        with self._lock:
            fp = self._aliases.get(wire_key)
        if fp is None:
            return None
        return self.put_fingerprint(fp, key, name, identity, probed_at, round_id, labels, announced=announced)

    def put_fingerprint(
        self,
        fp: str,
        key: str,
        name: str,
        identity: tuple[tuple[str, str, str], ...],
        probed_at: float,
        round_id: int,
        labels: Mapping[str, str] | None = None,
        announced: str = "",
    ) -> NodeRecord | None:
        """Store a node's round as the set held under fingerprint `fp` ("sha256:<64 hex>") plus its own
        `identity` triples (feature, element, value): no features given, none parsed. The listeners see the
        transition as for put(). None when no set with that fingerprint is held (the caller gets the
        features: put). `announced`: the fingerprint the sender gave, when it differs (NodeRecord.announced)."""
        with self._lock:
            fs = self._sets.get(fp)
            if fs is None:
                return None
            old = self._nodes.get(key)
            fs.nodes += 1
            if old is not None and old.has_features:
                self._release(old.fingerprint)
            new = NodeRecord(
                key=key, name=name, fingerprint=fp, identity=identity, probed_at=_not_after_now(probed_at),
                round_id=round_id,
                heard_at=time.monotonic(), state=STATE_OK,
                labels=tuple(sorted((labels or (old and dict(old.labels)) or {}).items())),
                announced=announced if announced != fp else "",
            )
            self._nodes[key] = new
            self.generation += 1
        self._notify(old, new)
        return new

    def heartbeat(self, key: str, round_id: int, fingerprint: str, probed_at: float = 0.0) -> bool:
        """A heartbeat from the node: refresh its time (and the probe time of a newer round with the same
        features, epoch seconds). False when it does not match what is stored (a change was missed: the
        caller should resubscribe). The fingerprint the node announced with the set it sent
        (NodeRecord.announced: an older daemon's, usage values in) names the same set."""
        with self._lock:
            old = self._nodes.get(key)
            if old is None or (fingerprint != old.fingerprint and not (old.announced and fingerprint == old.announced)):
                return False
            new = NodeRecord(  # not dataclasses.replace: ~2x its speed, and one heartbeat a node a round
                key=old.key, name=old.name, fingerprint=old.fingerprint, identity=old.identity, labels=old.labels,
                probed_at=max(_not_after_now(probed_at), old.probed_at), round_id=max(round_id, old.round_id),
                heard_at=time.monotonic(), state=STATE_OK, error="", announced=old.announced)
            self._nodes[key] = new
            self.generation += 1
        if old.state != STATE_OK:
            self._notify(old, new)
        return True

    def set_state(self, key: str, name: str, state: str, error: str = "") -> NodeRecord:
        """Mark a node STALE or UNREACHABLE (its features are kept: they are the last known)."""
        with self._lock:
            old = self._nodes.get(key)
            if old is not None:
                new = replace(old, state=state, error=error)
            else:
                new = NodeRecord(key=key, name=name, state=state, error=error)
            self._nodes[key] = new
            self.generation += 1
        if old is None or old.state != state:
            self._notify(old, new)
        return new

    def remove(self, key: str) -> None:
        """The node left the fleet."""
        with self._lock:
            old = self._nodes.pop(key, None)
            self.generation += 1
            if old is not None and old.has_features:
                self._release(old.fingerprint)
        if old is not None:
            self._notify(old, None)

    def _alias(self, wire_key: str, fp: str) -> None:
        """Remember a wire form's set (lock held). At most MAX_ALIASES, oldest first out: an older daemon's
        wire form holds its usage values, so each of its rounds is a new wire key for a set that stays held
        (shared with its peers), and nothing else would ever drop them. An alias only saves a parse."""
        self._aliases.pop(wire_key, None)
        while len(self._aliases) >= MAX_ALIASES:
            del self._aliases[next(iter(self._aliases))]
        self._aliases[wire_key] = fp

    def _release(self, fp: str) -> None:
        fs = self._sets[fp]
        fs.nodes -= 1
        if fs.nodes <= 0:
            del self._sets[fp]
            self._bytes -= fs.size
            for a in [a for a, f in self._aliases.items() if f == fp]:
                del self._aliases[a]
            for k in [k for k in self._verdicts if k[2] == fp]:
                del self._verdicts[k]

    def _notify(self, old: NodeRecord | None, new: NodeRecord | None) -> None:
        for cb in list(self.listeners):
            cb(old, new)

    # -- reading -----------------------------------------------------------------------------------
    def get(self, key: str) -> NodeRecord | None:
        with self._lock:
            return self._nodes.get(key)

    def records(self, keys: Iterable[str] | None = None) -> list[NodeRecord]:
        with self._lock:
            if keys is None:
                return list(self._nodes.values())
            return [r for k in keys if (r := self._nodes.get(k)) is not None]

    def records_by_key(self, keys: Iterable[str]) -> dict[str, NodeRecord]:
        """The records of `keys` that exist, under one lock."""
        with self._lock:
            return {k: r for k in keys if (r := self._nodes.get(k)) is not None}

    def feature_set(self, fp: str) -> FeatureSet | None:
        with self._lock:
            return self._sets.get(fp)

    def distinct_sets(self) -> int:
        with self._lock:
            return len(self._sets)

    def set_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def node_features(self, rec: NodeRecord) -> tuple[Features, dict[str, str]] | None:
        """The node's full features (shared set + identity) and unknown facts, or None when it has none."""
        fs = self.feature_set(rec.fingerprint)
        if fs is None:
            return None
        return with_identity(fs.features, rec.identity), fs.unknown

    # -- evaluating --------------------------------------------------------------------------------
    def evaluate(
        self, spec: Spec, skey: str, records: Sequence[NodeRecord], tags: Sequence[str] = (), nfd_view: bool = False
    ) -> dict[str, Verdict]:
        """Verdict per node key for the records that have features; once per distinct set (per node only
        for identity-reading specs). Verdicts are shared between nodes: treat them as read-only.
        `skey` (spec_key) must cover everything but tags that changes the verdict (text, nfd mode)."""
        per_node = reads_identity(spec)
        tag_key = tuple(tags)
        out: dict[str, Verdict] = {}
        local: dict[tuple[str, tuple[tuple[str, str, str], ...]], Verdict] = {}
        for rec in records:
            if not rec.has_features:
                continue
            ident = rec.identity if per_node else ()
            lk = (rec.fingerprint, ident)
            v = local.get(lk)
            if v is None:
                v = self._verdict(spec, skey, tag_key, rec.fingerprint, ident, nfd_view)
                if v is None:
                    continue
                local[lk] = v
            out[rec.key] = v
        return out

    def _verdict(
        self,
        spec: Spec,
        skey: str,
        tags: tuple[str, ...],
        fp: str,
        ident: tuple[tuple[str, str, str], ...],
        nfd_view: bool,
    ) -> Verdict | None:
        ck = (skey, tags, fp, ident)
        with self._lock:
            v = self._verdicts.get(ck)
            if v is not None:
                self._verdicts.move_to_end(ck)
                self.stats.cache_hits += 1
                return v
            fs = self._sets.get(fp)
        if fs is None:
            return None
        v = evaluate(spec, with_identity(fs.features, ident), tags=list(tags), unknown=fs.unknown, nfd_view=nfd_view)
        v.warnings = [*spec.warnings, *v.warnings]
        with self._lock:
            self.stats.evaluations += 1
            if fp in self._sets:
                self._verdicts[ck] = v
                while len(self._verdicts) > self.max_verdicts:
                    self._verdicts.popitem(last=False)
        return v
