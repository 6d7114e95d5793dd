"""Linting a spec: every parse problem, plus what parses but cannot mean what the author thinks.

NFD accepts a misspelt feature or attribute silently and the rule just never matches on any node.
The probes declare what they provide (FeatureInfo), so we can say "no probe provides pci.devices"
or "pci.device has no attribute bdf". A feature no probe provides is still valid NFD (NFD has
usb.device, storage.block, ...), so unknown features and attributes are warnings; lint exits 1 on
any problem, and `nodecompat attach` refuses only errors. Declared attribute names may be patterns
(`hugepages-<size>`): a `<...>` part matches any non-empty text.

Errors are what can never hold: ops that cannot hold for a feature's kind (In on a flag), GtLt/GeLe
ranges with no value inside, and expressions that must all hold (the matchFeatures of every rule
of a set, or of one matchAny element) but contradict each other on the same element of a feature
whose facts do not vary between instances. These checks are sound: a contradiction is reported
only when no node value can satisfy both expressions. Semantic checks run on whatever parsed, so
one bad op does not hide an unknown feature elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from nodecompat.engine.expressions import (
    ANY,
    DOES_NOT_EXIST,
    EXISTS,
    GE,
    GE_LE,
    GT,
    GT_LT,
    IN,
    IS_FALSE,
    IS_TRUE,
    LE,
    LT,
    NUMERIC_OPS,
    TYPE_VERSION,
    VALUE_OPS,
    ExpressionError,
    MatchExpression,
    go_atoi,
    parse_version,
)
from nodecompat.engine.spec import RULE_BACKREF_FEATURE, FeatureTerm, parse_spec_partial
from nodecompat.probes.catalog import closest, closest_feature


@dataclass(frozen=True)
class LintProblem:
    path: str
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}" if self.path else f"{self.severity}: {self.message}"


def _split(problem: str) -> tuple[str, str]:
    path, sep, msg = problem.partition(": ")
    if not sep or " " in path:
        return "", problem
    return path, msg


def _default_known() -> Mapping[str, object]:
    from nodecompat.probes.registry import known_features

    return known_features()


def lint_spec(text: str | bytes, known: Mapping[str, object] | None = None) -> list[LintProblem]:
    """Every problem of the spec; `known` maps feature name -> FeatureInfo (default: registered probes)."""
    spec, errors = parse_spec_partial(text)
    out = [LintProblem(*_split(p), "error") for p in errors]
    if spec is None:
        return out
    out += [LintProblem(*_split(w), "warning") for w in spec.warnings]
    if known is None:
        known = _default_known()
    for ci, c in enumerate(spec.compatibilities):
        set_terms: list[tuple[str, FeatureTerm, int]] = []  # every rule's matchFeatures: all must hold
        for ri, rule in enumerate(c.rules):
            rp = f"compatibilities[{ci}].rules[{ri}]"
            groups = [(f"{rp}.matchFeatures", rule.match_features)]
            groups += [(f"{rp}.matchAny[{i}].matchFeatures", el.match_features) for i, el in enumerate(rule.match_any)]
            for gp, terms in groups:
                for ti, t in enumerate(terms):
                    out.extend(_lint_term(f"{gp}[{ti}]", t, known))
            set_terms += [(f"{rp}.matchFeatures[{ti}]", t, ri) for ti, t in enumerate(rule.match_features)]
            for i, el in enumerate(rule.match_any):
                gp = f"{rp}.matchAny[{i}].matchFeatures"
                any_terms = [(f"{gp}[{ti}]", t, ri) for ti, t in enumerate(el.match_features)]
                out.extend(_contradictions(any_terms, known, "so this matchAny element can never match"))
        out.extend(_contradictions(set_terms, known, f"so compatibility set #{ci + 1} can never pass"))
    return out


def _kinds(info: object) -> frozenset[str]:
    return frozenset(getattr(info, "kinds", frozenset()))


@cache
def _name_pattern(declared: str) -> re.Pattern[str]:
    parts = re.split(r"<[^<>]+>", declared)
    return re.compile(".+".join(re.escape(p) for p in parts))


def attribute_declared(declared: Iterable[str], name: str) -> bool:
    """Whether `name` is one of the declared attribute names, where `<...>` matches any non-empty text."""
    return any(d == name or ("<" in d and _name_pattern(d).fullmatch(name)) for d in declared)


def _lint_term(path: str, t: FeatureTerm, known: Mapping[str, object]) -> list[LintProblem]:
    name = t.feature.lower()
    out: list[LintProblem] = []
    for el, e in (t.match_expressions or {}).items():
        empty = _empty_range(e)
        if empty:
            out.append(LintProblem(f"{path}.matchExpressions.{el}", f"{e.describe()} can never hold: {empty}"))
    if not name or name == RULE_BACKREF_FEATURE:
        return out
    info = known.get(name)
    if info is None:
        near = closest_feature(name, known)
        out.append(
            LintProblem(
                f"{path}.feature",
                f"unknown feature {t.feature!r}: no registered probe provides it (valid NFD, but this "
                "daemon never reports it, so the term cannot match here)"
                + (f"; did you mean {near!r}?" if near else ""),
                "warning",
            )
        )
        return out
    kinds = _kinds(info)
    attr_names = info.attribute_names() if hasattr(info, "attribute_names") else None
    for el, e in (t.match_expressions or {}).items():
        ep = f"{path}.matchExpressions.{el}"
        if kinds == {"flag"} and e.op in VALUE_OPS:
            out.append(LintProblem(ep, f"{e.op} can never hold on {name}: it is a flag feature (names, no values)"))
        if (
            "flag" not in kinds
            and attr_names is not None
            and e.op != DOES_NOT_EXIST
            and not attribute_declared(attr_names, el)
        ):
            near = closest(el, [a for a in attr_names if "<" not in a])
            hint = f"did you mean {near!r}? " if near else ""
            out.append(
                LintProblem(
                    ep, f"{name} has no attribute {el!r} ({hint}known: {', '.join(sorted(attr_names))})", "warning"
                )
            )
    return out


# -- what can never hold -----------------------------------------------------------------------------
def _bounds(e: MatchExpression) -> tuple[Any, Any] | None:
    """The closed range [lo, hi] (None = unbounded) a numeric op accepts, or None if not a clean numeric op."""
    if e.op not in NUMERIC_OPS or e.compiled().static_problems():
        return None
    try:
        if e.type == TYPE_VERSION:
            nums: list[Any] = [parse_version(v) for v in e.values]
            up: Any = lambda v: (v[0], v[1], v[2] + 1)  # noqa: E731 - the next version after v
            down: Any = None  # no largest version below v
        else:
            nums = [go_atoi(v) for v in e.values]
            up = lambda v: v + 1  # noqa: E731
            down = lambda v: v - 1  # noqa: E731
    except ValueError:
        return None
    a = nums[0]
    b = nums[-1]
    if e.op == GT:
        return (up(a), None)
    if e.op == GE:
        return (a, None)
    if e.op == LE:
        return (None, b)
    if e.op == LT:
        return (None, down(b)) if down else None
    if e.op == GE_LE:
        return (a, b)
    # GT_LT
    return (up(a), down(b)) if down else (up(a), _Below(b))


@dataclass(frozen=True)
class _Below:
    """An open upper bound (for versions, where there is no largest version below v)."""

    v: Any


def _empty(lo: Any, hi: Any) -> bool:
    if lo is None or hi is None:
        return False
    if isinstance(hi, _Below):
        return bool(lo >= hi.v)
    return bool(lo > hi)


def _empty_range(e: MatchExpression) -> str | None:
    if e.op not in (GT_LT, GE_LE):
        return None
    b = _bounds(e)
    if b is None or not _empty(*b):
        return None
    kind = "version" if e.type == TYPE_VERSION else "integer"
    return f"no {kind} lies strictly between {e.values[0]} and {e.values[1]}"


def _accepts(e: MatchExpression, value: str) -> bool:
    """Whether `e` holds on a present element with this value (an error on that value is not a match:
    NFD stops, and our evaluator marks the expression unmatched)."""
    try:
        return e.compiled().evaluate(True, value)
    except ExpressionError:
        return False


def _finite(e: MatchExpression) -> list[str] | None:
    """Every value `e` can hold on, when that is a finite list."""
    if e.op == IN:
        return list(e.values)
    if e.op == IS_TRUE:
        return ["true"]
    if e.op == IS_FALSE:
        return ["false"]
    return None


def _never_both(a: MatchExpression, b: MatchExpression) -> str | None:
    """Why no element (absent or with any value) can satisfy both expressions, or None if one might."""
    if a.compiled().static_problems() or b.compiled().static_problems():
        return None  # already an error; do not pile on
    for x, y in ((a, b), (b, a)):
        if x.op == DOES_NOT_EXIST and y.op not in (ANY, DOES_NOT_EXIST):
            return f"DoesNotExist contradicts {y.op}"
    if EXISTS in (a.op, b.op):
        return None
    for x, y in ((a, b), (b, a)):
        values = _finite(x)
        if values is not None and y.op != ANY and not any(_accepts(y, v) for v in values):
            return f"no value of {x.describe()} satisfies {y.describe()}"
    ba, bb = _bounds(a), _bounds(b)
    if ba is not None and bb is not None and a.type == b.type:
        lo = max((v for v in (ba[0], bb[0]) if v is not None), default=None)
        his = [v for v in (ba[1], bb[1]) if v is not None]
        for hi in his:
            if _empty(lo, hi):
                return f"{a.describe()} and {b.describe()} have no value in common"
    return None


def _contradictions(
    terms: list[tuple[str, FeatureTerm, int]], known: Mapping[str, object], consequence: str
) -> list[LintProblem]:
    """Terms that must all hold, on the same element of a non-instance feature, that cannot all hold."""
    seen: dict[tuple[Any, ...], list[tuple[str, MatchExpression]]] = {}
    out: list[LintProblem] = []
    for path, t, ri in terms:
        name = t.feature.lower()
        info = known.get(name)
        if name == RULE_BACKREF_FEATURE:
            kinds: frozenset[str] = frozenset({"attribute"})
            scope: tuple[Any, ...] = (name, ri)  # vars change between rules: compare within one rule only
        else:
            kinds = _kinds(info) if info is not None else frozenset()
            scope = (name,)
        if kinds not in ({"attribute"}, {"flag"}):
            continue  # instance terms may be met by different instances; unknown kinds may be anything
        for el, e in (t.match_expressions or {}).items():
            if kinds == {"flag"} and e.op not in (EXISTS, DOES_NOT_EXIST):
                continue
            earlier = seen.setdefault((*scope, el), [])
            for prev_path, prev in earlier:
                why = _never_both(prev, e)
                if why:
                    out.append(
                        LintProblem(
                            f"{path}.matchExpressions.{el}",
                            f"can never match together with {prev_path} ({why}), {consequence}",
                        )
                    )
                    break
            earlier.append((path, e))
    return out
