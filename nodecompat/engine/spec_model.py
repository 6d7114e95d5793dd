"""The image compatibility spec model (NFD v1alpha1): the data classes a parsed spec is made of, and its errors.

Follows NFD's api/image-compatibility/v1alpha1 types (Spec, Compatibility, Rule with MatchFeatures and MatchAny,
FeatureMatcherTerm with MatchExpressions and MatchName). Built by nodecompat.engine.spec_builder; parse_spec in
nodecompat.engine.spec re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodecompat.engine.expressions import MatchExpression
from nodecompat.engine.plain import Plain

SPEC_VERSION = "v1alpha1"
# The attribute feature where each rule publishes its `vars` for later rules (NFD's back-reference).
RULE_BACKREF_FEATURE = "rule.matched"


class SpecTimeout(TimeoutError):
    """The caller's deadline passed while the spec was being read (not the spec's fault)."""


class SpecError(ValueError):
    """The spec cannot be used; `problems` lists every problem found, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid spec")


# -- model ---------------------------------------------------------------------------------------
@dataclass(repr=False, eq=False)
class FeatureTerm(Plain):
    """One matchFeatures element: a feature and its matchExpressions and/or matchName."""

    feature: str
    # None when absent (NFD's nil map); {} is an explicit empty set, which matches any present feature.
    match_expressions: dict[str, MatchExpression] | None = None
    match_name: MatchExpression | None = None


@dataclass(repr=False, eq=False)
class MatchAnyElem(Plain):
    """One matchAny element: terms that must all match."""

    match_features: list[FeatureTerm] = field(default_factory=list)


@dataclass(repr=False, eq=False)
class Rule(Plain):
    """One rule of a compatibility set: matchFeatures, matchAny, and the vars it publishes."""

    name: str = ""
    match_features: list[FeatureTerm] = field(default_factory=list)
    match_any: list[MatchAnyElem] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)


@dataclass(repr=False, eq=False)
class Compatibility(Plain):
    """One compatibility set: its rules, weight, tag and description."""

    rules: list[Rule] = field(default_factory=list)
    weight: int = 0
    tag: str = ""
    description: str = ""


@dataclass(repr=False, eq=False)
class Spec(Plain):
    """A parsed image compatibility spec (v1alpha1) with the parser's warnings and mode."""

    version: str = ""
    compatibilities: list[Compatibility] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nfd_compat: bool = False
    # RE2 memory its compiled regexes may use (the sum of their max_mem budgets), for byte-bounded caches.
    regex_bytes: int = 0
