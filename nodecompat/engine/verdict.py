"""Verdicts: what an evaluation found, per expression, term, rule, compatibility set and overall.

The dataclasses mirror protos/nodecompat/v1/validation.proto field for field (same names), so
nodecompat.wire converts them to and from messages generically. `Verdict` adds the overall
answer (`compatible`, `score`) that the proto carries in ValidateImageResponse. to_dict/from_dict
give the JSON form used by `nodecompat validate -o json` and by snapshot tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine.plain import Plain

# FactStatus (validation.proto), by its proto enum names: why a term/expression has its outcome.
FACT_UNSPECIFIED = "FACT_STATUS_UNSPECIFIED"  # evaluated against what the probes reported
FACT_ABSENT = "FACT_STATUS_ABSENT"  # a probe provides it; this node does not have it
FACT_NOT_PROVIDED = "FACT_STATUS_NOT_PROVIDED"  # no probe provides this name: not a fact about the node
FACT_NFD_HIDDEN = "FACT_STATUS_NFD_HIDDEN"  # a nodecompat addition, hidden in NFD's view
FACT_PROBE_FAILED = "FACT_STATUS_PROBE_FAILED"  # the probe providing it failed (unknown)


@dataclass(repr=False, eq=False)
class ExpressionVerdict(Plain):
    """One matchExpression (or matchName) of a term against the node: outcome, what the node has, why."""

    feature: str = ""
    element: str = ""  # empty for matchName
    matcher_type: str = "matchExpression"  # or "matchName"
    op: str = ""
    values: list[str] = field(default_factory=list)
    type: str = ""
    matched: bool = False
    unknown: bool = False
    actual: list[str] = field(default_factory=list)
    instance: str = ""
    detail: str = ""
    fact: str = FACT_UNSPECIFIED
    suggestion: str = ""


@dataclass(repr=False, eq=False)
class TermVerdict(Plain):
    """One feature term (matchFeatures element): matched when every expression matched."""

    feature: str = ""
    matched: bool = False
    feature_present: bool = False
    unknown: bool = False
    expressions: list[ExpressionVerdict] = field(default_factory=list)
    fact: str = FACT_UNSPECIFIED
    suggestion: str = ""


@dataclass(repr=False, eq=False)
class MatchAnyVerdict(Plain):
    """One matchAny element: its terms, matched when all of them matched."""

    matched: bool = False
    terms: list[TermVerdict] = field(default_factory=list)


@dataclass(repr=False, eq=False)
class RuleVerdict(Plain):
    """One rule: matched when its matchFeatures terms and one matchAny element (if any) matched."""

    name: str = ""
    matched: bool = False
    unknown: bool = False
    match_features: list[TermVerdict] = field(default_factory=list)
    match_any: list[MatchAnyVerdict] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)


@dataclass(repr=False, eq=False)
class SetVerdict(Plain):
    """One compatibility set (by index in the spec): passed when all its rules matched."""

    index: int = 0
    description: str = ""
    tag: str = ""
    weight: int = 0
    passed: bool = False
    unknown: bool = False
    rules_matched: int = 0
    rules_total: int = 0
    rules: list[RuleVerdict] = field(default_factory=list)


@dataclass(repr=False, eq=False)
class UnseenName(Plain):
    """A name the spec uses that the evaluation could not see (not provided, or hidden in NFD's view)."""

    feature: str = ""
    element: str = ""  # "" for the feature itself
    fact: str = FACT_NOT_PROVIDED
    suggestion: str = ""
    message: str = ""


@dataclass(repr=False, eq=False)
class Verdict(Plain):
    """The whole answer for one node: per set, overall compatible/score, warnings and NFD's own output."""

    compatible: bool = False
    score: int = 0
    sets: list[SetVerdict] = field(default_factory=list)
    unknown_facts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Exactly what `nfd compat validate-node --output-json` prints; "" when NFD would stop with an error.
    nfd_json: str = ""
    # Where the spec came from (set when it was fetched from a registry) and which node was checked.
    image: str = ""
    image_digest: str = ""
    artifact_digest: str = ""
    node_name: str = ""
    # Names no probe provides (or NFD does not publish, in NFD's view); NFD's outcome is kept for them.
    unseen_names: list[UnseenName] = field(default_factory=list)
    # Evaluated against NFD's view (exactly what NFD publishes; nodecompat's additions hidden).
    nfd_view: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """Inverse of to_dict; unknown keys are ignored so older readers accept newer output."""
        return _build(cls, data)


def _build(cls: type[Any], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    nested = _NESTED.get(cls, {})
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        if f.name in nested:
            kwargs[f.name] = [_build(nested[f.name], x) for x in v]
        elif isinstance(v, list):
            kwargs[f.name] = list(v)
        elif isinstance(v, dict):
            kwargs[f.name] = dict(v)
        else:
            kwargs[f.name] = v
    return cls(**kwargs)


_NESTED: dict[type[Any], dict[str, type[Any]]] = {
    Verdict: {"sets": SetVerdict, "unseen_names": UnseenName},
    SetVerdict: {"rules": RuleVerdict},
    RuleVerdict: {"match_features": TermVerdict, "match_any": MatchAnyVerdict},
    MatchAnyVerdict: {"terms": TermVerdict},
    TermVerdict: {"expressions": ExpressionVerdict},
}
