"""The exact bytes `nfd compat validate-node --output-json` prints, quirks included.

NFD's per-expression `isMatch` is not "did this expression hold in this term" but "does some
processed term of the same feature list an expression with the same key, op and values"
(node-validator.go). That list is built by evaluateFeatureMatcher, which (a) records an
expression if it held on the flag/attribute part or on *any* instance, (b) skips terms on
missing features, (c) never evaluates a matchName after a failed term because `isTermMatch`
is not reset, and (d) compares the feature name as written with the lower-cased one. Entries are
sorted by (feature, name, MatchExpression.String()), and the JSON is Go's json.Marshal output:
compact, struct field order, omitempty, and `<`, `>`, `&` escaped. The evaluator hands us what it
computed per term; this module replays NFD's bookkeeping over it. If NFD would stop with an
error (a malformed expression or non-numeric node data that NFD evaluates), there is no JSON and
the error is returned instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine.expressions import MatchExpression, go_quote
from nodecompat.engine.matcher import MultiResult, NamesResult
from nodecompat.engine.plain import Plain
from nodecompat.engine.spec import Compatibility, FeatureTerm


@dataclass(repr=False, eq=False)
class TermEval(Plain):
    """One term as the evaluator computed it on the node's raw facts."""

    term: FeatureTerm
    present: bool
    multi: MultiResult | None = None
    names: NamesResult | None = None

    @property
    def matched(self) -> bool:
        return (
            self.present
            and (self.multi is None or (self.multi.matched and not self.multi.errors))
            and (self.names is None or self.names.matched)
        )


@dataclass(repr=False, eq=False)
class NfdRule(Plain):
    """One rule as NFD's validate-node reports it: its terms' evaluations and matchAny elements."""

    name: str
    match_features: list[TermEval] = field(default_factory=list)
    match_any: list[list[TermEval]] = field(default_factory=list)
    has_match_any: bool = False

    @property
    def is_match(self) -> bool:
        mf = all(t.matched for t in self.match_features)
        ma = not self.has_match_any or any(all(t.matched for t in el) for el in self.match_any)
        return mf and ma


@dataclass(repr=False, eq=False)
class NfdSet(Plain):
    """One compatibility set and its rules, in NFD's report."""

    compat: Compatibility
    rules: list[NfdRule] = field(default_factory=list)


@dataclass(repr=False, eq=False)
class _Processed(Plain):
    """One term as NFD prints it (lower-cased feature, its expressions or matchName)."""

    feature: str  # lower-cased, as NFD stores it
    expressions: dict[str, MatchExpression] | None
    match_name: MatchExpression | None


def _process(terms: list[TermEval]) -> tuple[list[_Processed], str | None]:
    """evaluateFeatureMatcher's MatchedFeaturesTerms, or the error that makes NFD stop."""
    is_term_match = True
    out: list[_Processed] = []
    for te in terms:
        if not te.present:
            continue
        err: str | None = None
        me: dict[str, MatchExpression] | None = None
        mn: MatchExpression | None = None
        t = te.term
        if t.match_expressions is not None and te.multi is not None:
            if te.multi.errors:
                err = te.multi.errors[0]
            is_term_match = te.multi.matched
            me = {n: t.match_expressions[n] for n in te.multi.names if n in te.multi.nfd_matched}
        if err is None and is_term_match and t.match_name is not None and te.names is not None:
            if te.names.errors:
                err = te.names.errors[0]
            else:
                is_term_match = te.names.matched
                if is_term_match:
                    mn = t.match_name
        if err is not None:
            return out, err
        if mn is not None or me:
            out.append(_Processed(t.feature.lower(), me, mn))
    return out, None


def expression_json(e: MatchExpression) -> dict[str, Any]:
    d: dict[str, Any] = {"op": e.op}
    if e.values:
        d["value"] = list(e.values)
    if e.type:
        d["type"] = e.type
    return d


def expression_string(e: MatchExpression) -> str:
    """Go's MatchExpression.String(): `{op: "In", value: ["a" "b"]}`."""
    if not e.values:
        return f"{{op: {go_quote(e.op)}}}"
    return f"{{op: {go_quote(e.op)}, value: [{' '.join(go_quote(v) for v in e.values)}]}}"


def _entries(terms: list[TermEval], processed: list[_Processed]) -> list[dict[str, Any]] | None:
    out: list[tuple[tuple[str, str, str], dict[str, Any]]] = []
    for te in terms:
        t = te.term
        if t.match_expressions is not None:
            for name, e in t.match_expressions.items():
                hit = False
                for p in processed:
                    if p.feature != t.feature or p.expressions is None:
                        continue
                    pe = p.expressions.get(name)
                    if pe is not None and pe.op == e.op and list(pe.values) == list(e.values):
                        hit = True
                        break
                entry = {
                    "feature": t.feature,
                    "name": name,
                    "expression": expression_json(e),
                    "matcherType": "matchExpression",
                    "isMatch": hit,
                }
                out.append(((t.feature, name, expression_string(e)), entry))
        if t.match_name is not None:
            hit = False
            for p in processed:
                if p.feature != t.feature or p.match_name is None:
                    continue
                hit = p.match_name.op == t.match_name.op and list(p.match_name.values) == list(
                    t.match_name.values
                )
                if hit:
                    break
            entry = {
                "feature": t.feature,
                "name": "",
                "expression": expression_json(t.match_name),
                "matcherType": "matchName",
                "isMatch": hit,
            }
            out.append(((t.feature, "", expression_string(t.match_name)), entry))
    if not out:
        return None
    out.sort(key=lambda x: x[0])
    return [e for _, e in out]


def build(sets: list[NfdSet]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The output array, or (None, error) when NFD would stop with an error."""
    result: list[dict[str, Any]] = []
    for s in sets:
        rules: list[dict[str, Any]] | None = [] if s.rules else None
        for r in s.rules:
            any_processed = []
            for el in r.match_any:
                p, err = _process(el)
                if err:
                    return None, err
                any_processed.append(p)
            mf_processed, err = _process(r.match_features)
            if err:
                return None, err
            rj: dict[str, Any] = {"name": r.name, "isMatch": r.is_match}
            mexp = _entries(r.match_features, mf_processed)
            if mexp:
                rj["matchedExpressions"] = mexp
            if r.match_any:
                rj["matchedAny"] = [
                    {"matchedExpressions": _entries(el, p)}
                    for el, p in zip(r.match_any, any_processed, strict=True)
                ]
            assert rules is not None
            rules.append(rj)
        cj: dict[str, Any] = {"rules": rules}
        if s.compat.description:
            cj["description"] = s.compat.description
        if s.compat.weight:
            cj["weight"] = s.compat.weight
        if s.compat.tag:
            cj["tag"] = s.compat.tag
        result.append(cj)
    return result, None


def nfd_error(sets: list[NfdSet]) -> str | None:
    """The error `nfd compat validate-node` would stop with (build()'s), without building the output."""
    for s in sets:
        for r in s.rules:
            for el in r.match_any:
                _, err = _process(el)
                if err:
                    return err
            _, err = _process(r.match_features)
            if err:
                return err
    return None


def go_json(obj: Any) -> str:
    """json.Marshal: compact, UTF-8, with Go's HTML-safe escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def nfd_json(sets: list[NfdSet]) -> tuple[str, str | None]:
    """(output, None), or ("", error message) when `nfd compat validate-node` would fail."""
    data, err = build(sets)
    if err is not None or data is None:
        return "", err
    return go_json(data), None
