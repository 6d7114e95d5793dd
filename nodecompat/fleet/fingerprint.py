"""The canonical feature set of a node and its fingerprint ("sha256:<hex>").

Canonical form: NFD's wire format (`Features.to_nfd`: kinds, names, flag elements and attribute keys
sorted; instance order kept, since NFD's matcher reports instances by index) serialised as JSON with
sorted keys and no whitespace, plus the features whose facts are unknown (a failed probe) with why,
because they change verdicts. Node identity attributes (IDENTITY: system.name.nodename, which the system
probe sets to the node's own name) are left out, so two nodes on identical hardware and software share
one fingerprint; the inventory keeps identity per node and overlays it when a spec reads it. Volatile
elements (runtime usage values such as memory.size available_bytes, declared `volatile` in the probes'
catalog: nodecompat/fleet/volatile.py) are left out too: they change every round of a busy host and are
not part of the profile, so the fingerprint changes only when the profile does.
hashlib and json are the standard library's; nothing to hand-write beyond choosing the form.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from nodecompat.features import AttributeFeature, Features
from nodecompat.fleet.volatile import strip_volatile
from nodecompat.utf8 import utf8_features, utf8_mapping

# Per-node attributes that are not a property of the hardware/software profile: feature -> element names.
IDENTITY: dict[str, frozenset[str]] = {"system.name": frozenset({"nodename"})}


def split_identity(features: Features) -> tuple[Features, tuple[tuple[str, str, str], ...]]:
    """(features without identity attributes, identity as sorted (feature, element, value) triples).

    The returned Features shares unchanged feature objects with the input (it is a shallow split)."""
    ident: list[tuple[str, str, str]] = []
    attrs = dict(features.attributes)
    for name, keys in IDENTITY.items():
        feat = attrs.get(name)
        if feat is None or not keys & feat.elements.keys():
            continue
        kept = {k: v for k, v in feat.elements.items() if k not in keys}
        ident.extend((name, k, feat.elements[k]) for k in sorted(keys & feat.elements.keys()))
        if kept:
            attrs[name] = AttributeFeature(kept)
        else:
            del attrs[name]
    return Features(flags=features.flags, attributes=attrs, instances=features.instances), tuple(ident)


def with_identity(shared: Features, identity: tuple[tuple[str, str, str], ...]) -> Features:
    """The node's full features: a shared set plus its identity attributes (a shallow copy)."""
    if not identity:
        return shared
    attrs = dict(shared.attributes)
    for name, key, value in identity:
        base = attrs.get(name)
        attrs[name] = AttributeFeature({**(base.elements if base else {}), key: value})
    return Features(flags=shared.flags, attributes=attrs, instances=shared.instances)


def canonical_bytes(features: Features, unknown: Mapping[str, str] | None = None) -> bytes:
    """The canonical serialisation (identity attributes included only if the caller left them in); text that is
    not UTF-8 escaped as nodecompat/wire.py sends it, so a receiver computes the same from what it got."""
    doc: dict[str, object] = {"features": features.to_nfd()}
    if unknown:
        doc["unknown"] = dict(sorted(unknown.items()))
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # host names that are not UTF-8: escaped as the wire carries them (nodecompat/utf8.py)
        return canonical_bytes(utf8_features(features), utf8_mapping(unknown) if unknown else None)


def fingerprint(features: Features, unknown: Mapping[str, str] | None = None) -> str:
    """"sha256:<64 hex>" of the canonical feature set, identity attributes and volatile elements left out."""
    shared, _ = split_identity(strip_volatile(features))
    return "sha256:" + hashlib.sha256(canonical_bytes(shared, unknown)).hexdigest()
