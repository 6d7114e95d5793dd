"""Shared pieces of the translations: spec terms back to NFD's wire form, names, merged set rules.

A compatibility set is an AND of rules; NFD's NodeFeatureRule/NodeFeatureGroup rule is
`matchFeatures` (AND) plus one `matchAny` (OR of matchFeatures). A set therefore becomes one NFD rule
whose matchFeatures are all its rules' matchFeatures and whose matchAny is the cross product of its
rules' matchAny lists (AND distributes over OR), bounded by MAX_MATCH_ANY. NFD's NodeFeatureGroup
ORs its featureGroupRules (pkg/nfd-master/nfd-master.go, updateNodeFeatureGroup), so one merged rule per
set is also what keeps the set's AND there. Back-references (`rule.matched`) between rules of the same
set cannot survive the merge (a rule's vars are published only after the whole merged rule matched):
such sets are reported as untranslatable rather than translated wrongly.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine.expressions import MatchExpression
from nodecompat.engine.spec import RULE_BACKREF_FEATURE, Compatibility, FeatureTerm, Spec

# Most matchAny alternatives one merged set rule may have (the cross product of its rules' matchAny).
MAX_MATCH_ANY = 256
LABEL_PREFIX = "nodecompat.io/"
_DNS_LABEL_RE = re.compile(r"[^a-z0-9-]+")
_LABEL_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def dump_yaml(obj: Any, *, many: bool = False) -> str:
    """YAML without anchors/aliases (kubectl and people read it), keys in the order built."""
    import yaml

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    if many:
        return yaml.dump_all(obj, Dumper=_NoAliases, sort_keys=False)
    return yaml.dump(obj, Dumper=_NoAliases, sort_keys=False)


class TranslateError(ValueError):
    """The spec (or a set of it) cannot be translated; the message says which part and why."""


def expression_to_nfd(e: MatchExpression) -> dict[str, Any]:
    """`{op, value, type}` as NFD's MatchExpression JSON (api/nfd/v1alpha1/types.go)."""
    out: dict[str, Any] = {"op": e.op}
    if e.values:
        out["value"] = list(e.values)
    if e.type:
        out["type"] = e.type
    return out


def term_to_nfd(t: FeatureTerm) -> dict[str, Any]:
    """A feature term as NFD's FeatureMatcherTerm JSON."""
    out: dict[str, Any] = {"feature": t.feature}
    if t.match_expressions is not None:
        out["matchExpressions"] = {k: expression_to_nfd(v) for k, v in t.match_expressions.items()}
    if t.match_name is not None:
        out["matchName"] = expression_to_nfd(t.match_name)
    return out


def dns_name(text: str, fallback: str) -> str:
    """A DNS-1123 label (lower case, digits, '-', at most 63) made from `text`, else `fallback`."""
    s = _DNS_LABEL_RE.sub("-", text.lower()).strip("-")[:63].strip("-")
    return s or fallback


def set_names(spec: Spec) -> list[str]:
    """A name per compatibility set: its tag when usable in a label name, else `set<index>`; unique."""
    names: list[str] = []
    for i, c in enumerate(spec.compatibilities):
        tag = c.tag.strip()
        name = tag if tag and len(tag) <= 20 and _LABEL_NAME_RE.fullmatch(tag) else f"set{i}"
        if name in names:
            name = f"set{i}"
        names.append(name)
    return names


def label_name(spec_name: str, set_name: str) -> str:
    """`nodecompat.io/<spec-name>.<set>`; TranslateError when the name part passes 63 characters."""
    name = f"{spec_name}.{set_name}"
    if len(name) > 63 or not _LABEL_NAME_RE.fullmatch(name):
        raise TranslateError(
            f"label name {name!r} is not a valid Kubernetes label name (at most 63 characters of "
            "[A-Za-z0-9-_.]); choose a shorter --name"
        )
    return LABEL_PREFIX + name


def kube_weights(spec: Spec) -> list[int]:
    """The sets' weights as Kubernetes preferred-term weights (1..100): kept when all fit, else scaled by
    the largest; 0 becomes 1 (Kubernetes refuses 0)."""
    ws = [c.weight for c in spec.compatibilities]
    top = max(ws, default=0)
    if top <= 100:
        return [min(100, max(1, w)) for w in ws]
    return [max(1, round(w * 100 / top)) for w in ws]


def weight_order(spec: Spec) -> list[int]:
    """Set indexes by weight, highest first (the spec's order among equals)."""
    return sorted(range(len(spec.compatibilities)), key=lambda i: -spec.compatibilities[i].weight)


@dataclass
class MergedRule:
    """One compatibility set as one NFD rule: matchFeatures AND matchAny (alternatives, may be empty)."""

    match_features: list[FeatureTerm] = field(default_factory=list)
    match_any: list[list[FeatureTerm]] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)

    def to_nfd(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_features:
            out["matchFeatures"] = [term_to_nfd(t) for t in self.match_features]
        if self.match_any:
            out["matchAny"] = [{"matchFeatures": [term_to_nfd(t) for t in alt]} for alt in self.match_any]
        return out


def merge_set(c: Compatibility, where: str) -> MergedRule:
    """The set's rules ANDed into one NFD rule; TranslateError when that cannot be exact."""
    m = MergedRule()
    any_lists: list[list[list[FeatureTerm]]] = []
    for r in c.rules:
        for t in [*r.match_features, *(t for a in r.match_any for t in a.match_features)]:
            if t.feature.lower() == RULE_BACKREF_FEATURE:
                raise TranslateError(
                    f"{where}: rule {r.name!r} refers to {RULE_BACKREF_FEATURE} (another rule's vars); "
                    "a set's rules become one NFD rule, where such a back-reference cannot hold"
                )
        m.match_features.extend(r.match_features)
        if r.match_any:
            any_lists.append([a.match_features for a in r.match_any])
        m.vars.update(r.vars)
    total = 1
    for alts in any_lists:
        total *= len(alts)
    if any_lists and total > MAX_MATCH_ANY:
        raise TranslateError(
            f"{where}: its rules' matchAny lists multiply to {total} alternatives in one NFD rule "
            f"(limit {MAX_MATCH_ANY}); split the set"
        )
    if any_lists:
        m.match_any = [[t for part in combo for t in part] for combo in itertools.product(*any_lists)]
    return m
