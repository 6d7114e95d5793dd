"""A small, independent port of NFD's matcher, for differential testing of nodecompat.engine (issue 15).

Written from NFD master 76e6cc8c (github.com/kubernetes-sigs/node-feature-discovery):
- pkg/apis/nfd/nodefeaturerule/expression.go: evaluateMatchExpression, MatchMulti, MatchGetInstances,
  MatchNamesMulti (failFast=false everywhere, as the node validator calls it);
- pkg/apis/nfd/nodefeaturerule/rule.go: ExecuteGroupRule, evaluateFeatureMatcher (including that
  `isTermMatch` is declared once, before the loop over terms, and so carries over between terms);
- pkg/client-nfd/compat/node-validator/node-validator.go: Execute (rules in order, the first error
  stops the run, each rule's vars inserted into the `rule.matched` attribute feature, created empty
  even for a rule that did not match);
- github.com/Masterminds/semver/v3 v3.5.0 NewVersion (CoerceNewVersion) and Go's strconv.Atoi.

It shares no code with nodecompat: Go regexps are not parsed here at all. The generator
(tests/test_differential.py) draws patterns from a table that says, per pattern, whether Go's
regexp.Compile accepts it (from Go's own parse tests and doc) and gives a Python `re` equivalent for
the values it generates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

OPS = {"", "In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "Gt", "Ge", "Lt", "Le", "GtLt", "GeLe",
       "IsTrue", "IsFalse"}  # fmt: skip

_SEMVER = re.compile(
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)


class NfdError(Exception):
    """NFD returned an error: `nfd compat validate-node` stops."""


def atoi(s: str) -> int:
    """strconv.Atoi: optional sign, ASCII digits, int64."""
    if not re.fullmatch(r"[+-]?[0-9]+", s):
        raise ValueError(s)
    n = int(s)
    if not -(1 << 63) <= n < (1 << 63):
        raise ValueError(s)
    return n


def version(s: str) -> tuple[int, int, int]:
    """semver.NewVersion then SetPrerelease(""): (major, minor, patch)."""
    m = _SEMVER.fullmatch(s)
    if not m:
        raise ValueError(s)
    nums = [int(m.group(1)), int((m.group(2) or ".0")[1:]), int((m.group(3) or ".0")[1:])]
    if any(n >= 1 << 64 for n in nums):
        raise ValueError(s)
    for ident in (m.group(5) or "").split(".") if m.group(5) else []:
        if ident.isdigit() and len(ident) > 1 and ident[0] == "0":
            raise ValueError(s)
    return nums[0], nums[1], nums[2]


class Port:
    """NFD's matcher over plain data. `regex(pattern)` returns a search function or raises ValueError
    where Go's regexp.Compile fails (supplied by the caller: the pattern table)."""

    def __init__(self, regex: Callable[[str], Callable[[str], bool]]) -> None:
        self.regex = regex

    def expr(self, e: Mapping[str, Any], valid: bool, value: str | None) -> bool:
        op, vals, typ = e.get("op", ""), list(e.get("value") or []), e.get("type", "")
        if op not in OPS:
            raise NfdError(f"invalid Op {op}")
        if op in ("", "Exists", "DoesNotExist"):
            if vals:
                raise NfdError("value must be empty")
            return True if op == "" else (valid if op == "Exists" else not valid)
        if not (valid and value is not None):
            return False
        if op in ("In", "NotIn"):
            if not vals:
                raise NfdError("value must be non-empty")
            return (value in vals) == (op == "In")
        if op == "InRegexp":
            if not vals:
                raise NfdError("value must be non-empty")
            try:
                searches = [self.regex(v) for v in vals]
            except ValueError:
                raise NfdError("invalid regexp") from None
            return any(s(value) for s in searches)
        if op in ("Gt", "Ge", "Lt", "Le", "GtLt", "GeLe"):
            want = 1 if op in ("Gt", "Ge", "Lt", "Le") else 2
            if len(vals) != want:
                raise NfdError("wrong value count")
            parse: Callable[[str], Any]
            if typ == "version":
                parse = version
            elif typ == "":
                parse = atoi
            else:
                raise NfdError("bad type")
            try:
                lhs = parse(value)
            except ValueError:
                raise NfdError("node value") from None
            try:
                rhs = [parse(v) for v in vals]
            except ValueError:
                raise NfdError("spec value") from None
            if want == 1:
                r = rhs[0]
                return {"Gt": lhs > r, "Ge": lhs >= r, "Lt": lhs < r, "Le": lhs <= r}[op]
            if typ == "" and rhs[0] >= rhs[1]:
                raise NfdError("value[0] must be less than value[1]")
            return rhs[0] < lhs < rhs[1] if op == "GtLt" else rhs[0] <= lhs <= rhs[1]
        if vals:  # IsTrue / IsFalse
            raise NfdError("value must be empty")
        return value == ("true" if op == "IsTrue" else "false")

    def values_match(self, m: Mapping[str, Any], attrs: Mapping[str, str]) -> bool:
        """MatchGetValues with failFast=false: every expression is evaluated."""
        ok = True
        for n, e in m.items():
            if not self.expr(e, n in attrs, attrs.get(n, "")):
                ok = False
        return ok

    def multi(self, m: Mapping[str, Any], keys: Any, values: Any, instances: list[dict[str, str]]) -> bool:
        is_match = keys is not None or values is not None
        for n, e in m.items():
            mk = mv = False
            if keys is not None:
                mk = self.expr(e, n in keys, None)
                if not mk and e.get("op") == "DoesNotExist":
                    is_match = False
                    continue
            if values is not None:
                mv = self.expr(e, n in values, values.get(n, ""))
                if not mv and e.get("op") == "DoesNotExist":
                    is_match = False
                    continue
            if not mk and not mv:
                is_match = False
        matched = [inst for inst in instances if self.values_match(m, inst)]
        return is_match or bool(matched)

    def names(self, e: Mapping[str, Any], keys: Any, values: Any, instances: list[dict[str, str]]) -> bool:
        hits = [k for k in (keys or ()) if self.expr(e, True, k)]
        hits += [k for k in (values or {}) if self.expr(e, True, k)]
        for inst in instances:
            if any([self.expr(e, True, k) for k in inst]):
                hits.append("instance")
        return bool(hits)

    def feature_matcher(self, terms: list[Mapping[str, Any]], features: Mapping[str, Any]) -> bool:
        is_match = True
        is_term_match = True  # declared once, outside the loop, as in rule.go
        for t in terms:
            name = t.get("feature", "").lower()
            keys = features["flags"].get(name)
            values = features["attributes"].get(name)
            insts = features["instances"].get(name)
            if keys is None and values is None and insts is None:
                is_match = False
                continue
            if t.get("matchExpressions") is not None:
                is_term_match = self.multi(t["matchExpressions"], keys, values, insts or [])
            if is_term_match and t.get("matchName") is not None:
                is_term_match = self.names(t["matchName"], keys, values, insts or [])
            if not is_term_match:
                is_match = False
        return is_match

    def group_rule(self, r: Mapping[str, Any], features: Mapping[str, Any]) -> tuple[bool, dict[str, str] | None]:
        any_ = r.get("matchAny") or []
        mf = r.get("matchFeatures") or []
        is_any = False
        for el in any_:
            if self.feature_matcher(el.get("matchFeatures") or [], features):
                is_any = True
        is_mf = False
        if mf:
            is_mf = self.feature_matcher(mf, features)
            if not is_mf:
                return False, None
        return (not any_ or is_any) and (not mf or is_mf), dict(r.get("vars") or {})

    def validate(self, spec: Mapping[str, Any], features: Mapping[str, Any]) -> list[list[bool]] | None:
        """Per compatibility set, each rule's isMatch; None when NFD stops with an error."""
        out = []
        try:
            for c in spec.get("compatibilities") or []:
                rules = []
                for r in c.get("rules") or []:
                    matched, vars_ = self.group_rule(r, features)
                    rules.append(matched)
                    features["attributes"].setdefault("rule.matched", {}).update(vars_ or {})
                out.append(rules)
        except NfdError:
            return None
        return out
