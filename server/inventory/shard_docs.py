"""What the inventory shards keep in etcd (server/inventory/inventory_shards.py): the rendezvous owner of a node, the
document its owner publishes (NodeDoc) and a shared feature set's bytes.

A feature set is stored as its canonical form (nodecompat/fleet/fingerprint.py: NFD's wire JSON plus the
unknown facts), whose sha256 is the fingerprint it is stored under: a reader checks the bytes against the
fingerprint before it believes them, so a corrupted or substituted set is refused, not served.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from nodecompat.features import Features
from nodecompat.fleet.fingerprint import canonical_bytes
from nodecompat.fleet.store import NodeRecord

MAX_DOC_BYTES = 16 << 10  # a node document larger than this is not published (nor read)
MAX_SET_BYTES = 1 << 20  # a feature set larger than this is not shared (etcd's default request limit is 1.5 MiB)


def rendezvous_owner(address: str, replicas: frozenset[str]) -> str:
    """The replica of `replicas` ranking highest for `address` (highest random weight); '' when none."""
    best, best_score = "", b""
    for rid in replicas:
        score = hashlib.blake2b(f"{rid}\0{address}".encode(), digest_size=8).digest()
        if score > best_score or (score == best_score and rid > best):
            best, best_score = rid, score
    return best


@dataclass(frozen=True)
class NodeDoc:
    """One node as its owner publishes it."""

    owner: str
    name: str
    fingerprint: str
    identity: tuple[tuple[str, str, str], ...]
    probed_at: float
    round_id: int
    state: str
    error: str

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "name": self.name, "fingerprint": self.fingerprint,
                           "identity": [list(t) for t in self.identity], "probed_at": self.probed_at,
                           "round_id": self.round_id, "state": self.state, "error": self.error[:1000]},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> NodeDoc:
        """ValueError/KeyError/TypeError on anything malformed."""
        if len(raw) > MAX_DOC_BYTES:
            raise ValueError(f"{len(raw)} bytes")
        try:
            d = json.loads(raw)
        except RecursionError:
            raise ValueError("nested too deep") from None
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
        ident = tuple((str(a), str(b), str(c)) for a, b, c in d.get("identity") or [])
        probed_at = float(d["probed_at"])
        if not math.isfinite(probed_at):
            raise ValueError(f"probed_at {probed_at}")
        return cls(str(d["owner"]), str(d["name"]), str(d["fingerprint"]), ident, probed_at,
                   int(d["round_id"]), str(d["state"]), str(d.get("error", "")))


def doc_of(owner: str, rec: NodeRecord) -> NodeDoc:
    return NodeDoc(owner, rec.name, rec.fingerprint, rec.identity, rec.probed_at, rec.round_id, rec.state, rec.error)


def encode_set(features: Features, unknown: dict[str, str]) -> bytes:
    """A feature set (identity attributes left out) as stored: its canonical bytes."""
    return canonical_bytes(features, unknown)


def decode_set(raw: bytes, fingerprint: str) -> tuple[Features, dict[str, str]]:
    """(features, unknown facts) from stored bytes; ValueError when they are not the set `fingerprint` names
    (sha256 mismatch), too large, or malformed."""
    if len(raw) > MAX_SET_BYTES:
        raise ValueError(f"{len(raw)} bytes (limit {MAX_SET_BYTES})")
    if "sha256:" + hashlib.sha256(raw).hexdigest() != fingerprint:
        raise ValueError("the bytes do not match the fingerprint")
    try:
        parsed = json.loads(raw)
        features = Features.from_nfd(parsed["features"])
        unknown = {str(k): str(v) for k, v in dict(parsed.get("unknown") or {}).items()}
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"unreadable: {exc}") from None
    return features, unknown
