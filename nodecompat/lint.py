"""Linting a spec: every parse problem, plus what parses but cannot mean what the author thinks.

NFD accepts a misspelt feature or attribute silently and the rule just never matches on any node.
The probes declare what they provide (FeatureInfo), so we can say "no probe provides pci.devices"
or "pci.device has no attribute bdf". We also catch ops that can never hold for a feature's kind
(In on a flag) and rules that can never match because two terms on the same non-instance feature
contradict each other. These checks are cheap and sound: a warning here is always a real defect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nodecompat.expressions import DOES_NOT_EXIST, EXISTS, IN, NOT_IN, VALUE_OPS, MatchExpression
from nodecompat.spec import RULE_BACKREF_FEATURE, FeatureTerm, SpecError, parse_spec


@dataclass(frozen=True)
class LintProblem:
    path: str
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        return (
            f"{self.severity}: {self.path}: {self.message}"
            if self.path
            else f"{self.severity}: {self.message}"
        )


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
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        return [LintProblem(*_split(p), "error") for p in exc.problems]
    out = [LintProblem(*_split(w), "warning") for w in spec.warnings]
    if known is None:
        known = _default_known()
    for ci, c in enumerate(spec.compatibilities):
        for ri, rule in enumerate(c.rules):
            rp = f"compatibilities[{ci}].rules[{ri}]"
            groups = [(f"{rp}.matchFeatures", rule.match_features)]
            groups += [
                (f"{rp}.matchAny[{i}].matchFeatures", el.match_features)
                for i, el in enumerate(rule.match_any)
            ]
            for gp, terms in groups:
                for ti, t in enumerate(terms):
                    out.extend(_lint_term(f"{gp}[{ti}]", t, known))
                out.extend(_contradictions(gp, terms, known, ci))
    return out


def _kinds(info: object) -> frozenset[str]:
    return frozenset(getattr(info, "kinds", frozenset()))


def _lint_term(path: str, t: FeatureTerm, known: Mapping[str, object]) -> list[LintProblem]:
    name = t.feature.lower()
    if not name or name == RULE_BACKREF_FEATURE:
        return []
    info = known.get(name)
    if info is None:
        return [
            LintProblem(f"{path}.feature", f"unknown feature {t.feature!r}: no registered probe provides it")
        ]
    out: list[LintProblem] = []
    kinds = _kinds(info)
    attr_names = info.attribute_names() if hasattr(info, "attribute_names") else None
    for el, e in (t.match_expressions or {}).items():
        ep = f"{path}.matchExpressions.{el}"
        if kinds == {"flag"} and e.op in VALUE_OPS:
            out.append(
                LintProblem(ep, f"{e.op} can never hold on {name}: it is a flag feature (names, no values)")
            )
        if "flag" not in kinds and attr_names is not None and el not in attr_names and e.op != DOES_NOT_EXIST:
            out.append(
                LintProblem(ep, f"{name} has no attribute {el!r} (known: {', '.join(sorted(attr_names))})")
            )
    return out


def _never_both(a: MatchExpression, b: MatchExpression) -> str | None:
    """Why an element value can never satisfy both expressions, or None."""
    if a.op == IN and b.op == IN and not set(a.values) & set(b.values):
        return f"In [{', '.join(a.values)}] and In [{', '.join(b.values)}] share no value"
    for x, y in ((a, b), (b, a)):
        if x.op == IN and y.op == NOT_IN and set(x.values) <= set(y.values):
            return f"In [{', '.join(x.values)}] is excluded by NotIn [{', '.join(y.values)}]"
        if x.op == DOES_NOT_EXIST and y.op != DOES_NOT_EXIST and y.op and y.op != "":
            return f"DoesNotExist contradicts {y.op}"
    if {a.op, b.op} == {EXISTS, DOES_NOT_EXIST}:
        return "Exists contradicts DoesNotExist"
    return None


def _contradictions(
    path: str, terms: list[FeatureTerm], known: Mapping[str, object], ci: int
) -> list[LintProblem]:
    """Terms ANDed in one list on the same attribute-only feature that cannot all hold."""
    seen: dict[tuple[str, str], tuple[int, MatchExpression]] = {}
    out: list[LintProblem] = []
    for ti, t in enumerate(terms):
        name = t.feature.lower()
        info = known.get(name)
        kinds = (
            _kinds(info)
            if info is not None
            else (frozenset({"attribute"}) if name == RULE_BACKREF_FEATURE else frozenset())
        )
        if kinds != {"attribute"}:
            continue  # instance terms may be met by different instances; flags only know Exists
        for el, e in (t.match_expressions or {}).items():
            prev = seen.get((name, el))
            if prev is not None:
                why = _never_both(prev[1], e)
                if why:
                    out.append(
                        LintProblem(
                            f"{path}[{ti}].matchExpressions.{el}",
                            f"can never match together with {path}[{prev[0]}] ({why}), "
                            f"so compatibility set #{ci + 1} can never pass",
                        )
                    )
            else:
                seen[(name, el)] = (ti, e)
    return out
