"""Building a Spec from loaded YAML/JSON data, with up-front validation (strict mode) or NFD's tolerance.

NFD decodes a spec with sigs.k8s.io/yaml into Go structs (api/image-compatibility/v1alpha1) and validates
nothing: unknown fields are dropped, a bad op or regex surfaces only when that expression meets a present
element. SpecBuilder checks the whole spec and records *every* problem with its location (strict mode), or,
with nfd_compat, lists what NFD accepts as "tolerated: ..." warnings. It also caps the spec's complexity
(sets, rules, terms, expressions, values, regexes; nodecompat.engine.limits) in both modes, so evaluation of
any accepted spec stays cheap. Used by nodecompat.engine.spec (parse_spec, parse_spec_partial).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from nodecompat.engine.expressions import MatchExpression
from nodecompat.engine.limits import (
    MAX_COMPATIBILITY_SETS,
    MAX_EXPRESSIONS,
    MAX_REGEXES,
    MAX_RULES,
    MAX_SPEC_REGEX_MEM,
    MAX_TERMS,
    MAX_VALUES_PER_EXPRESSION,
)
from nodecompat.engine.spec_load import DUPS, Scalar, go_string
from nodecompat.engine.spec_model import (
    SPEC_VERSION,
    Compatibility,
    FeatureTerm,
    MatchAnyElem,
    Rule,
    Spec,
    SpecTimeout,
)

_DUPS = DUPS
_go_string = go_string

_PATH_SAFE = re.compile(r"[A-Za-z0-9_\-/]+")


def _key_path(path: str, key: str) -> str:
    if not path:
        return key if _PATH_SAFE.fullmatch(key) else json.dumps(key)
    return f"{path}.{key}" if _PATH_SAFE.fullmatch(key) else f"{path}[{json.dumps(key)}]"


class _OverBudget(Exception):
    """A complexity cap was passed; the error is recorded and building stops at once."""


_CAPS = {
    "sets": (MAX_COMPATIBILITY_SETS, "compatibility sets"),
    "rules": (MAX_RULES, "rules in all"),
    "terms": (MAX_TERMS, "feature terms in all"),
    "expressions": (MAX_EXPRESSIONS, "match expressions in all"),
    "regexes": (MAX_REGEXES, "InRegexp patterns in all"),
}


class SpecBuilder:
    """Builds one Spec; `errors` (strict problems) and `warnings` collect what it found, each located."""

    def __init__(self, nfd_compat: bool, deadline: float | None = None) -> None:
        self.compat = nfd_compat
        self.deadline = deadline
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.counts = dict.fromkeys(_CAPS, 0)
        self.regex_bytes = 0

    def count(self, what: str, path: str, n: int = 1) -> None:
        """Count `n` more `what`; past its cap, record a located error and stop building."""
        self.counts[what] += n
        limit, label = _CAPS[what]
        if self.counts[what] > limit:
            self.error(path, f"the spec has more than {limit} {label}, over the limit (a hostile or generated spec?)")
            raise _OverBudget

    # -- helpers ---------------------------------------------------------------------------------
    def error(self, path: str, msg: str) -> None:
        self.errors.append(f"{path}: {msg}" if path else msg)

    def lazy(self, path: str, msg: str) -> None:
        """A problem NFD only hits when the expression is evaluated against a present element."""
        if self.compat:
            self.warnings.append(
                f"tolerated: {path}: {msg} "
                "(NFD reports this only when the expression meets a present element)"
            )
        else:
            self.error(path, msg)

    def fields(self, path: str, obj: Any, known: tuple[str, ...], what: str) -> dict[str, Any] | None:
        """Check `obj` is a mapping; map keys to known field names (Go matches them case-insensitively)."""
        if isinstance(obj, Scalar) and obj.value is None:
            return {}
        if not isinstance(obj, dict):
            self.error(path, f"{what} must be a mapping, not {_kind(obj)}")
            return None
        out: dict[str, Any] = {}
        lower = {k.lower(): k for k in known}
        for dup in obj.get(_DUPS, []):
            if self.compat:
                self.warnings.append(f"tolerated: {_key_path(path, dup)}: duplicate key (the last one wins)")
            else:
                self.error(_key_path(path, dup), "duplicate key")
        for k, v in obj.items():
            if k == _DUPS:
                continue
            if k in known:
                out[k] = v
            elif k.lower() in lower:
                want = lower[k.lower()]
                if self.compat:
                    self.warnings.append(
                        f"tolerated: {_key_path(path, k)}: read as {want!r} (Go ignores case)"
                    )
                    out[want] = v
                else:
                    self.error(_key_path(path, k), f"unknown field {k!r}; did you mean {want!r}?")
            else:
                hint = f"; the fields of {what} are {', '.join(known)}"
                if self.compat:
                    self.warnings.append(
                        f"tolerated: {_key_path(path, k)}: unknown field {k!r} ignored{hint}"
                    )
                else:
                    self.error(_key_path(path, k), f"unknown field {k!r}{hint}")
        return out

    def string(self, path: str, v: Any, *, warn_lossy: bool = False) -> str:
        if isinstance(v, str):
            return v
        if isinstance(v, Scalar):
            s = _go_string(v)
            if warn_lossy and v.value is not None and s != v.raw and not isinstance(v.value, bool):
                self.warnings.append(
                    f"{path}: {v.raw} is a YAML number and is read as {json.dumps(s)}; "
                    "quote it to keep it as written"
                )
            return s
        self.error(path, f"expected a string, not {_kind(v)}")
        return ""

    def listing(self, path: str, v: Any) -> list[Any]:
        if v is None or (isinstance(v, Scalar) and v.value is None):
            return []
        if not isinstance(v, list):
            self.error(path, f"expected a list, not {_kind(v)}")
            return []
        return v

    # -- spec parts ------------------------------------------------------------------------------
    def spec(self, data: Any) -> Spec:
        spec = Spec(nfd_compat=self.compat)
        if data is None or (isinstance(data, Scalar) and data.value is None):
            if self.compat:
                self.warnings.append("tolerated: the spec is empty")
            else:
                self.error("", "the spec is empty")
            return spec
        top = self.fields("", data, ("version", "compatibilities"), "a spec")
        if top is None:
            return spec
        if "version" in top:
            spec.version = self.string("version", top["version"])
            if spec.version != SPEC_VERSION:
                self.warnings.append(
                    f"version: {spec.version!r} is not {SPEC_VERSION!r}; reading it as {SPEC_VERSION}"
                )
        else:
            self.warnings.append(f"version: missing; reading the spec as {SPEC_VERSION}")
        try:
            for i, c in enumerate(self.listing("compatibilities", top.get("compatibilities"))):
                self.count("sets", f"compatibilities[{i}]")
                spec.compatibilities.append(self.compatibility(f"compatibilities[{i}]", c))
        except _OverBudget:
            return spec
        if not spec.compatibilities:
            self.warnings.append("compatibilities: no compatibility sets; no node can be compatible")
        return spec

    def compatibility(self, path: str, obj: Any) -> Compatibility:
        c = Compatibility()
        f = self.fields(path, obj, ("rules", "weight", "tag", "description"), "a compatibility set")
        if f is None:
            return c
        for i, r in enumerate(self.listing(f"{path}.rules", f.get("rules"))):
            self.count("rules", f"{path}.rules[{i}]")
            c.rules.append(self.rule(f"{path}.rules[{i}]", r))
        if "weight" in f:
            c.weight = self.weight(f"{path}.weight", f["weight"])
        if "tag" in f:
            c.tag = self.string(f"{path}.tag", f["tag"])
        if "description" in f:
            c.description = self.string(f"{path}.description", f["description"])
        return c

    def weight(self, path: str, v: Any) -> int:
        value = v.value if isinstance(v, Scalar) else v
        if isinstance(value, bool) or not isinstance(value, int | float) or value is None:
            self.error(path, f"weight must be an integer, not {_kind(v)}")
            return 0
        if isinstance(value, float):
            if not value.is_integer():
                self.error(path, f"weight must be an integer, not {value}")
                return 0
            value = int(value)
        if not -(1 << 31) <= value < (1 << 31):
            self.error(path, "weight must fit in 32 bits")
            return 0
        return int(value)

    def rule(self, path: str, obj: Any) -> Rule:
        r = Rule()
        f = self.fields(path, obj, ("name", "matchFeatures", "matchAny", "vars", "varsTemplate"), "a rule")
        if f is None:
            return r
        if "name" in f:
            r.name = self.string(f"{path}.name", f["name"])
        if "varsTemplate" in f:
            self.error(
                f"{path}.varsTemplate",
                f"varsTemplate is not supported (rule {r.name!r}); set fixed values with `vars` instead",
            )
        r.match_features = self.terms(f"{path}.matchFeatures", f.get("matchFeatures"))
        for i, el in enumerate(self.listing(f"{path}.matchAny", f.get("matchAny"))):
            ep = f"{path}.matchAny[{i}]"
            ef = self.fields(ep, el, ("matchFeatures",), "a matchAny element")
            r.match_any.append(
                MatchAnyElem(self.terms(f"{ep}.matchFeatures", (ef or {}).get("matchFeatures")))
            )
        if "vars" in f:
            vf = f["vars"]
            if isinstance(vf, Scalar) and vf.value is None:
                vf = {}
            if not isinstance(vf, dict):
                self.error(f"{path}.vars", f"vars must be a mapping of name: value, not {_kind(vf)}")
            else:
                for k, v in vf.items():
                    if k != _DUPS:
                        r.vars[k] = self.string(_key_path(f"{path}.vars", k), v)
        return r

    def terms(self, path: str, v: Any) -> list[FeatureTerm]:
        return [self.term(f"{path}[{i}]", t) for i, t in enumerate(self.listing(path, v))]

    def term(self, path: str, obj: Any) -> FeatureTerm:
        self.count("terms", path)
        t = FeatureTerm(feature="")
        f = self.fields(path, obj, ("feature", "matchExpressions", "matchName"), "a feature term")
        if f is None:
            return t
        t.feature = self.string(f"{path}.feature", f.get("feature", ""))
        if not t.feature:
            if self.compat:
                self.warnings.append(f"tolerated: {path}.feature: empty; this term can never match")
            else:
                self.error(f"{path}.feature", "feature is required (e.g. pci.device)")
        elif t.feature != t.feature.lower():
            self.warnings.append(
                f"{path}.feature: {t.feature!r} is looked up as {t.feature.lower()!r} "
                "(feature names ignore case)"
            )
        me = f.get("matchExpressions")
        if me is not None and not (isinstance(me, Scalar) and me.value is None):
            mp = f"{path}.matchExpressions"
            if not isinstance(me, dict):
                self.error(
                    mp, f"matchExpressions must be a mapping of element name: expression, not {_kind(me)}"
                )
            else:
                t.match_expressions = {}
                for dup in me.get(_DUPS, []):
                    if self.compat:
                        self.warnings.append(
                            f"tolerated: {_key_path(mp, dup)}: duplicate key (the last one wins)"
                        )
                    else:
                        self.error(_key_path(mp, dup), "duplicate key")
                for name, e in me.items():
                    if name != _DUPS:
                        t.match_expressions[name] = self.expression(_key_path(mp, name), e)
        mn = f.get("matchName")
        if mn is not None and not (isinstance(mn, Scalar) and mn.value is None):
            t.match_name = self.expression(f"{path}.matchName", mn)
        return t

    def expression(self, path: str, obj: Any) -> MatchExpression:
        self.count("expressions", path)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise SpecTimeout(f"the deadline passed at {path}")
        e = MatchExpression()
        if isinstance(obj, Scalar) and obj.value is None:
            self.error(path, "the expression is empty (null); write e.g. {op: Exists}")
            return e
        f = self.fields(path, obj, ("op", "value", "type"), "an expression")
        if f is None:
            return e
        e.op = self.string(f"{path}.op", f.get("op", ""))
        errors_before = len(self.errors)
        if "value" in f:
            raw = f["value"]
            if not isinstance(raw, list) and not (isinstance(raw, Scalar) and raw.value is None):
                self.error(
                    f"{path}.value", f"value must be a list (write value: [{_plain(raw)}]), not {_kind(raw)}"
                )
            elif isinstance(raw, list) and len(raw) > MAX_VALUES_PER_EXPRESSION:
                self.error(
                    f"{path}.value",
                    f"{len(raw)} values, over the limit of {MAX_VALUES_PER_EXPRESSION} in one expression",
                )
            else:
                for i, item in enumerate(self.listing(f"{path}.value", raw)):
                    if isinstance(item, Scalar) and item.value is None:
                        if self.compat:
                            self.warnings.append(
                                f"tolerated: {path}.value[{i}]: null read as an empty string"
                            )
                        else:
                            self.error(f"{path}.value[{i}]", "null is not a value; quote it or remove it")
                    e.values.append(self.string(f"{path}.value[{i}]", item, warn_lossy=True))
        if "type" in f:
            e.type = self.string(f"{path}.type", f["type"])
        if e.op == "InRegexp":
            self.count("regexes", f"{path}.value", len(e.values))
        if len(self.errors) == errors_before:  # no follow-on errors from a malformed value list
            compiled = e.compiled()
            for problem in compiled.static_problems():
                self.lazy(path, problem)
            if compiled.limit_error:  # nodecompat's own limit: refused in both modes
                self.error(f"{path}.value", compiled.limit_error)
            self.regex_bytes += compiled.memory_bytes
            if self.regex_bytes > MAX_SPEC_REGEX_MEM:
                self.error(
                    f"{path}.value",
                    f"the spec's regexps need more than {MAX_SPEC_REGEX_MEM} bytes of compiled RE2 memory "
                    "together (nodecompat's per-spec limit, MAX_SPEC_REGEX_MEM)",
                )
                raise _OverBudget
        if (
            e.type == "version"
            and e.op
            and e.op in ("In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "IsTrue", "IsFalse")
        ):
            self.warnings.append(f"{path}.type: 'version' has no effect on op {e.op}")
        return e


def _kind(v: Any) -> str:
    if isinstance(v, Scalar):
        v = v.value
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    return type(v).__name__


def _plain(v: Any) -> str:
    return _go_string(v) if isinstance(v, Scalar | str) else "..."


