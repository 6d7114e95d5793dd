"""Volatile elements: runtime usage values that are facts of one probe round but not of a node's profile.

A probe declares them in its catalog (probes/base.py AttributeInfo `volatile=True`): memory.size
`available_bytes` (/proc/meminfo MemAvailable), memory.hugepages `hugepages-<size>.free` and the
memory.hugepages.node instances' `free` (free_hugepages). They change on every round of a busy host, so
they are kept out of the profile: the fingerprint (nodecompat/fleet/fingerprint.py), WatchFeatures'
messages, registration heartbeats, the aggregator's stored sets and its snapshot. GetFeatures and the
node's own ValidateImage still carry them, fresh from the round. NFD publishes no such value
(source/memory/memory.go reads no free memory; source/memory hugepages reads nr_hugepages only).

The aggregator never answers a spec reading one from a stored set (it does not hold them): `reads_volatile`
names what a spec reads (a matchExpressions key a volatile declaration matches, or any matchName on a
feature that has volatile elements: a name pattern could match one), and ValidateFleet then asks every
node live (docs/inventory.md "Usage values").

Declarations come from the built-in probes only (nodecompat.probes.*, built once), never a plugin's: the
node strips what it declares, the aggregator judges what a spec reads by what it declares, and a plugin
installed on the nodes is usually not installed on the aggregator. Had a node stripped a plugin's volatile
element, the aggregator (not knowing it) would answer a spec reading it from a stored set that lacks it: a
wrong verdict. A plugin's usage values stay in the profile (its fingerprint moves with them: slower, right).
Hand-written: a filter over our own data classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from nodecompat.engine.spec import Spec
from nodecompat.features import AttributeFeature, Features, Instance, InstanceFeature
from nodecompat.probes.base import AttributeInfo

BUILTIN_MODULES = "nodecompat.probes."  # where the probes every node and aggregator have live


@cache
def volatile_declarations() -> dict[str, tuple[AttributeInfo, ...]]:
    """{lower-case feature name: its volatile AttributeInfo declarations} over the registered built-in probes
    (a probe class defined in BUILTIN_MODULES; plugins' are ignored: module doc). Built once per process;
    features without volatile elements are not listed."""
    from nodecompat.probes.registry import load_probes

    out: dict[str, tuple[AttributeInfo, ...]] = {}
    probes, _ = load_probes()
    for probe in probes:
        if not type(probe).__module__.startswith(BUILTIN_MODULES):
            continue
        for info in probe.features:
            vols = tuple(a for a in info.attributes or () if a.volatile)
            if vols:
                out[info.name.lower()] = out.get(info.name.lower(), ()) + vols
    return out


def _is_volatile(vols: tuple[AttributeInfo, ...], element: str) -> bool:
    return any(v.matches(element) for v in vols)


def _kept(vols: tuple[AttributeInfo, ...], elements: Mapping[str, str]) -> dict[str, str] | None:
    """`elements` without the volatile ones; None when none is volatile (nothing to copy)."""
    if not any(_is_volatile(vols, k) for k in elements):
        return None
    return {k: v for k, v in elements.items() if not _is_volatile(vols, k)}


def strip_volatile(features: Features) -> Features:
    """The node's profile: `features` without volatile elements (attributes and instance attributes); a
    feature whose elements were all volatile is kept, empty. The input itself when it holds none; else a
    shallow copy sharing every unchanged feature object (the input is never changed)."""
    decl = volatile_declarations()
    attrs: dict[str, AttributeFeature] | None = None
    insts: dict[str, InstanceFeature] | None = None
    for name, feat in features.attributes.items():
        vols = decl.get(name.lower())
        if vols and (kept := _kept(vols, feat.elements)) is not None:
            attrs = attrs if attrs is not None else dict(features.attributes)
            attrs[name] = AttributeFeature(kept)
    for name, ifeat in features.instances.items():
        vols = decl.get(name.lower())
        if not vols or not any(_is_volatile(vols, k) for i in ifeat.elements for k in i.attributes):
            continue
        insts = insts if insts is not None else dict(features.instances)
        insts[name] = InstanceFeature(
            [Instance({k: v for k, v in i.attributes.items() if not _is_volatile(vols, k)}) for i in ifeat.elements]
        )
    if attrs is None and insts is None:
        return features
    return Features(flags=features.flags, attributes=attrs if attrs is not None else features.attributes,
                    instances=insts if insts is not None else features.instances)


def reads_volatile(spec: Spec) -> list[str]:
    """What of `spec` reads a volatile element, as "feature element" (or "feature matchName: may match
    a, b") strings, sorted, each once; [] when nothing does. Conservative: every matchExpressions key a
    volatile declaration matches (its `<...>` patterns included), and any matchName on a feature having
    volatile elements, in matchFeatures and matchAny of every rule."""
    decl = volatile_declarations()
    found: set[str] = set()
    for c in spec.compatibilities:
        for r in c.rules:
            for t in [*r.match_features, *(t for a in r.match_any for t in a.match_features)]:
                vols = decl.get(t.feature.lower())
                if not vols:
                    continue
                for key in t.match_expressions or {}:
                    if _is_volatile(vols, key):
                        found.add(f"{t.feature} {key}")
                if t.match_name is not None:
                    found.add(f"{t.feature} matchName (may match {', '.join(v.name for v in vols)})")
    return sorted(found)


def volatile_problem(spec: Spec) -> str:
    """"" when `spec` reads no volatile element, else the actionable sentence the aggregator gives where
    it cannot answer live (WatchFleet, WhatIf)."""
    read = reads_volatile(spec)
    if not read:
        return ""
    return (f"the spec reads a usage value that the inventory does not keep ({'; '.join(read)}): it changes "
            "every probe round and is not part of a node's profile; ask ValidateFleet with answer_source LIVE "
            "(`nodecompat fleet validate --live`) or the node's ValidateImage")
