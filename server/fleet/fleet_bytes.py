"""ValidateFleet's per-node answers from the inventory, assembled from pre-serialized pieces.

A caller that does not set `grouped_results` gets one NodeResult per node (10,000 for 10,000 nodes) and a
FleetSummary whose ranking names every node. Building those as upb messages in Python cost ~5 us a node
(set fields, copy the verdict's template, add the ranking entry, read it back to sort, serialize). The answer
is the same bytes when assembled from parts, by the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/): a message's encoding is its fields' encodings in
field-number order (as upb writes them), an embedded message is its tag, its length (varint) and its
encoding, and a repeated field's encoding is its elements', one after another. So:

- per verdict (spec x distinct feature set, once per call): the NodeResult fields 4-10 (compatible, score,
  status, reasons) and 12-13 (source, fingerprint), and the RankedNode fields 2-4, serialized by upb;
- per node (kept in NodeBytes, bounded in bytes): its node_name field (1, shared by NodeResult and RankedNode),
  address and labels (2-3), serialized by upb in one message and cut at the node_name field's size;
- per node and probe time: as_of (11), the Timestamp the store wrote when it recorded the probe time
  (NodeRecord.as_of, nodecompat/fleet/timestamp_wire.py) behind its tag and length. A node's probe time moves
  every probe round, so nothing kept here depends on it: an answer a round later encodes nothing per node;
- per call: tag + length + those pieces joined, per node, per message of BATCH nodes, and for the ranking.

Only the tags and lengths of embedded messages are written here (the tags from the descriptors) and the size
of a string field computed to cut at; every other field is serialized by upb, as_of by the store. The
field numbers relied on are checked at import. tests/test_fleet_bytes.py compares the result with the
messages built the old way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

from nodecompat.fleet.store import NodeRecord
from nodecompat.fleet.timestamp_wire import varint  # protobuf's base-128 varint, one copy for both
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.v1 import fleet_pb2

# Bytes of per-node pieces kept (NodeBytes): ~250 B a node (10,000 nodes: ~2.5 MiB) with short names and
# labels, so ~120,000 nodes fit; past it the oldest entries go (their nodes are serialized again when asked).
MAX_NODE_BYTES = 32 << 20
# Estimated bytes an entry costs beyond its pieces' lengths: its tuple, dict slot, 2 bytes objects' headers
# (tracemalloc, 10,000 entries with 41 B of pieces each: 248 B an entry, so ~207 B beyond them).
ENTRY_OVERHEAD = 240


def _tag(message: Any, field: str) -> bytes:
    """The tag of a length-delimited (wire type 2) field of `message` (a message class)."""
    fd = message.DESCRIPTOR.fields_by_name[field]
    assert fd.type in (fd.TYPE_MESSAGE, fd.TYPE_STRING), fd.full_name
    return varint(fd.number << 3 | 2)


NODES_TAG = _tag(fleet_pb2.ValidateFleetResponse, "nodes")
SUMMARY_TAG = _tag(fleet_pb2.ValidateFleetResponse, "summary")
NODE_TAG = _tag(fleet_pb2.NodeResults, "nodes")
RANKING_TAG = _tag(fleet_pb2.FleetSummary, "ranking")
_AS_OF_TAG = _tag(fleet_pb2.NodeResult, "as_of")


def _numbers(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


# The order the pieces are joined in is field-number order: a change of fleet.proto that breaks it fails here.
_NR = _numbers(fleet_pb2.NodeResult)
assert _NR["node_name"] < _NR["address"] < _NR["labels"] < min(
    _NR[f] for f in ("compatible", "score", "status", "error", "latency_seconds", "reasons", "attempts")
) and max(_NR[f] for f in ("compatible", "score", "status", "error", "latency_seconds", "reasons", "attempts")) < _NR[
    "as_of"] < min(_NR["source"], _NR["fingerprint"]), _NR
AS_OF = _NR["as_of"]
_RN = _numbers(fleet_pb2.RankedNode)
assert _NR["node_name"] < 16 and _RN["node_name"] == _NR["node_name"]  # one tag byte, shared by both
assert _RN["node_name"] < min(_RN["compatible"], _RN["score"], _RN["status"])
_FS = _numbers(fleet_pb2.FleetSummary)
RANKING = _FS["ranking"]


def fields_bytes(message: Any, low: int, high: int) -> bytes:
    """The encoding of `message`'s fields numbered low..high (inclusive), as upb serializes them."""
    part = type(message)()
    part.CopyFrom(message)
    for fd, _ in message.ListFields():
        if not low <= fd.number <= high:
            part.ClearField(fd.name)
    return part.SerializeToString()


# as_of's tag and length per length of a Timestamp's encoding (at most 22 bytes: two 10-byte varints + tags)
_AS_OF_HEADS = [_AS_OF_TAG + varint(n) for n in range(23)]


def as_of_field(record: NodeRecord) -> bytes:
    """NodeResult's as_of field (11) for `record`'s probe time: its tag, length and the store's encoding."""
    return _AS_OF_HEADS[len(record.as_of)] + record.as_of


def _string_field_size(text: str) -> int:
    """Bytes of a proto3 string field numbered < 16 holding `text` (tag, length, UTF-8; none when empty)."""
    if not text:
        return 0
    n = len(text.encode())
    return 1 + len(varint(n)) + n


class Verdict:
    """One NodeResult template's pieces: its fields before as_of, after it, and the RankedNode's own fields."""

    __slots__ = ("after", "before", "bucket", "key", "rank", "sizes")

    def __init__(self, template: fleet_pb2.NodeResult) -> None:
        self.before = fields_bytes(template, _NR["compatible"], AS_OF - 1)
        self.after = fields_bytes(template, AS_OF + 1, 1 << 29)
        self.sizes = len(self.before) + len(self.after)
        self.rank = fleet_pb2.RankedNode(compatible=template.compatible, score=template.score,
                                         status=template.status).SerializeToString()
        self.key = (not template.compatible, -template.score)  # summarize()'s order, names aside
        self.bucket: list[tuple[str, str, bytes, bytes]] = []  # this call's ranking entries of its key


# (node, name, node_name field, address+labels fields, their length, bytes counted)
Entry = tuple[FleetNode, str, bytes, bytes, int, int]


class NodeBytes:
    """Per node (by address) the pieces of its NodeResult that are its own and do not move with its probe
    time: the node_name field, the address and labels fields (bytes, upb's encoding). Bounded by `max_bytes`
    (estimated: pieces' lengths + ENTRY_OVERHEAD each); past it the oldest entries are dropped.
    Safe for concurrent calls: lookups read the dict (atomic), changes hold a lock."""

    def __init__(self, max_bytes: int = MAX_NODE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.entries: dict[str, Entry] = {}
        self.bytes = 0
        self._lock = threading.Lock()

    def put(self, node: FleetNode, name: str) -> Entry:
        """Serialize `node`'s pieces (entry(): named `name`) and keep them."""
        e = entry(node, name)
        self.keep([e])
        return e

    def keep(self, fresh: Sequence[Entry]) -> None:
        """Keep these entries (under the lock once), replacing those of their nodes; a replaced entry keeps
        its place, and the oldest nodes first seen go first while the total is over max_bytes."""
        entries = self.entries
        with self._lock:
            total = self.bytes
            for e in fresh:
                address = e[0].address
                old = entries.get(address)
                entries[address] = e
                total += e[5] if old is None else e[5] - old[5]
            while total > self.max_bytes and entries:
                total -= entries.pop(next(iter(entries)))[5]
            self.bytes = total


_NAME_TAG = _tag(fleet_pb2.NodeResult, "node_name")
_ADDRESS_TAG = _tag(fleet_pb2.NodeResult, "address")
_LABELS_TAG = _tag(fleet_pb2.NodeResult, "labels")


def _str_field(tag: bytes, text: str) -> bytes:
    """A proto3 string field: nothing when empty, else tag, length (varint) and UTF-8."""
    if not text:
        return b""
    raw = text.encode()
    return tag + varint(len(raw)) + raw


def entry(node: FleetNode, name: str) -> Entry:
    """`node`'s pieces, named `name`: fields 1-3, split after the node_name field. Asked again only when the
    node, its labels or its name change, or its entry was dropped (NodeBytes' bound), so a fleet's first
    answer (a new aggregator, 10,000 nodes) pays it for every node: with at most one label the three fields
    are written here (a map entry's key (1) and value (2) always written, as upb writes them: one entry has
    one encoding), ~1.5 us a node; with more labels upb serializes them (a map's order is upb's), ~4 us."""
    labels = node.labels
    if len(labels) <= 1:
        try:
            own = _str_field(_ADDRESS_TAG, node.address)
            for lk, lv in labels.items():
                body = _str_field(b"\x0a", lk) or b"\x0a\x00"
                body += _str_field(b"\x12", lv) or b"\x12\x00"
                own += _LABELS_TAG + varint(len(body)) + body
            name_field = _str_field(_NAME_TAG, name)
        except UnicodeEncodeError:  # what upb makes of it (an error, as before)
            pass
        else:
            own_len = len(name_field) + len(own)
            return (node, name, name_field, own, own_len, own_len + ENTRY_OVERHEAD)
    r = fleet_pb2.NodeResult()
    r.node_name = name
    r.address = node.address
    if node.labels:
        lab = r.labels
        for lk, lv in node.labels.items():
            lab[lk] = lv
    own = r.SerializeToString()
    k = _string_field_size(name)
    name_field, own = own[:k], own[k:]
    own_len = len(name_field) + len(own)
    return (node, name, name_field, own, own_len, own_len + ENTRY_OVERHEAD)


class Ranking:
    """The summary's ranking (summarize()'s order: compatible first, higher score, name, address; equal keys
    in the order added) and the live results' counts, built from inventory pieces and live NodeResults.
    `keep` False: counts only (a grouped answer has no ranking)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.buckets: dict[tuple[bool, int], list[tuple[str, str, bytes, bytes]]] = {}
        self.live_ok = self.live_compatible = self.live_failed = 0

    def add_live(self, results: Iterable[fleet_pb2.NodeResult]) -> None:
        """Count and rank live results (source LIVE)."""
        for r in results:
            if r.status == "OK":
                self.live_ok += 1
                self.live_compatible += r.compatible
            else:
                self.live_failed += 1
            if self.keep:
                name = fleet_pb2.RankedNode(node_name=r.node_name).SerializeToString()
                rest = fleet_pb2.RankedNode(compatible=r.compatible, score=r.score, status=r.status).SerializeToString()
                self.bucket((not r.compatible, -r.score)).append((r.node_name, r.address, name, rest))

    def bucket(self, key: tuple[bool, int]) -> list[tuple[str, str, bytes, bytes]]:
        """The entries of one (not compatible, -score) key: (name, address, name field, RankedNode's other fields)."""
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = []
        return b

    def to_bytes(self) -> bytes:
        """The encoding of the ranking field (every RankedNode), b'' when not kept."""
        out: list[bytes] = []
        add = out.extend
        heads = _RANK_HEADS
        for key in sorted(self.buckets):
            entries = self.buckets[key]
            entries.sort(key=_BY_NAME)  # stable: equal names and addresses stay in the order added
            for _, _, name, rest in entries:
                n = len(name) + len(rest)
                add((heads.get(n) or _head(heads, RANKING_TAG, n), name, rest))
        return b"".join(out)


_BY_NAME = itemgetter(0, 1)


def node_messages(
    answered: Sequence[tuple[FleetNode, NodeRecord, Any]], verdicts: dict[Any, Verdict], cache: NodeBytes,
    ranking: Ranking, batch: int,
) -> list[bytes]:
    """The ValidateFleetResponse messages (serialized) carrying one NodeResult per answered node, `batch`
    nodes a message, in order; each node also goes to `ranking`. `answered`: (node, its record, its
    verdict's key in `verdicts`). The node's name is the one its daemon reported for a DNS node; its as_of
    the record's (written by the store: NodeRecord.as_of)."""
    messages: list[bytes] = []
    get = cache.entries.get
    keep = ranking.keep
    if keep:
        for v in verdicts.values():
            v.bucket = ranking.bucket(v.key)
    heads = _NODE_HEADS
    as_of_heads = _AS_OF_HEADS
    for start in range(0, len(answered), batch):
        pieces: list[bytes] = []
        add = pieces.extend
        size = 0
        fresh: list[Entry] = []  # kept once per message (one lock)
        for node, rec, vk in answered[start:start + batch]:
            e = get(node.address)
            if e is None or (e[0] is not node and e[0] != node) or (
                node.source == SOURCE_DNS and e[1] != (rec.name or node.name)
            ):
                e = entry(node, rec.name if node.source == SOURCE_DNS and rec.name else node.name)
                fresh.append(e)
            v = verdicts[vk]
            as_of = rec.as_of
            n = e[4] + v.sizes + 2 + len(as_of)  # as_of: one tag byte, one length byte (<= 22)
            head = heads.get(n) or _head(heads, NODE_TAG, n)
            add((head, e[2], e[3], v.before, as_of_heads[len(as_of)], as_of, v.after))
            size += len(head) + n
            if keep:
                v.bucket.append((e[1], node.address, e[2], v.rank))
        messages.append(NODES_TAG + varint(size) + b"".join(pieces))
        if fresh:
            cache.keep(fresh)
    return messages


# tag + length of an embedded message, per length (only lengths < 2**14 kept: at most 16,384 entries, ~1 MiB)
_NODE_HEADS: dict[int, bytes] = {}
_RANK_HEADS: dict[int, bytes] = {}


def _head(heads: dict[int, bytes], tag: bytes, n: int) -> bytes:
    """tag + varint(n), kept in `heads` when n < 2**14."""
    h = tag + varint(n)
    if n < 1 << 14:
        heads[n] = h
    return h


def summary_message(summary: fleet_pb2.FleetSummary, ranking: Ranking | None) -> bytes:
    """The serialized ValidateFleetResponse carrying `summary` (which has no ranking of its own) with
    `ranking`'s entries as its ranking field."""
    assert not summary.ranking
    body = summary.SerializeToString()
    if ranking is not None and ranking.keep and ranking.buckets:
        body = fields_bytes(summary, 0, RANKING - 1) + ranking.to_bytes() + fields_bytes(summary, RANKING + 1, 1 << 29)
    return SUMMARY_TAG + varint(len(body)) + body


def serialize_or_pass(response: object) -> bytes:
    """ValidateFleet's response serializer: bytes assembled here go as they are, messages are serialized."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()  # type: ignore[attr-defined]



