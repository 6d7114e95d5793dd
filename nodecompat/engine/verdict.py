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


@dataclass
class ExpressionVerdict:
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


@dataclass
class TermVerdict:
    feature: str = ""
    matched: bool = False
    feature_present: bool = False
    unknown: bool = False
    expressions: list[ExpressionVerdict] = field(default_factory=list)


@dataclass
class MatchAnyVerdict:
    matched: bool = False
    terms: list[TermVerdict] = field(default_factory=list)


@dataclass
class RuleVerdict:
    name: str = ""
    matched: bool = False
    unknown: bool = False
    match_features: list[TermVerdict] = field(default_factory=list)
    match_any: list[MatchAnyVerdict] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)


@dataclass
class SetVerdict:
    index: int = 0
    description: str = ""
    tag: str = ""
    weight: int = 0
    passed: bool = False
    unknown: bool = False
    rules_matched: int = 0
    rules_total: int = 0
    rules: list[RuleVerdict] = field(default_factory=list)


@dataclass
class Verdict:
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
    Verdict: {"sets": SetVerdict},
    SetVerdict: {"rules": RuleVerdict},
    RuleVerdict: {"match_features": TermVerdict, "match_any": MatchAnyVerdict},
    MatchAnyVerdict: {"terms": TermVerdict},
    TermVerdict: {"expressions": ExpressionVerdict},
}
