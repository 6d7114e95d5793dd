"""Differential test (issue 15): seeded random specs and nodes, evaluated by nodecompat's engine in NFD mode
and by an independent port of NFD's matcher (tests/nfd_port.py); both must give the same per-rule
isMatch, or both stop with an error. A disagreement is shrunk to a minimal case and printed.

CI runs DIFF_CASES (default 1,500: a few seconds); `make fuzz` runs 20,000 or more (DIFF_CASES, DIFF_SEED).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
from collections.abc import Callable
from typing import Any

from nfd_port import Port

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import SpecError, parse_spec
from nodecompat.features import Features

CASES = int(os.environ.get("DIFF_CASES", "1500"))
SEED = int(os.environ.get("DIFF_SEED", "15"))

# (Go pattern, does Go's regexp.Compile accept it, a Python `re` pattern matching the same generated values).
# Validity from Go's src/regexp/syntax (parse_test.go, doc.go): \C, \8, \Z, a**, {1001}, nested repeat
# products over 1000, unknown \p names are errors; Go 1.25+ takes loose Unicode names (\p{greek}, \p{Letter}).
GREEK = "\u0370-\u03ff"
REGEXES: list[tuple[str, bool, str]] = [
    (r"^Genuine", True, r"^Genuine"),
    (r"^Genuine\C", False, ""),
    (r"\p{Greek}", True, f"[{GREEK}]"),
    (r"\p{greek}", True, f"[{GREEK}]"),
    (r"\pL", True, rf"[A-Za-z{GREEK}]"),
    (r"\p{Letter}", True, rf"[A-Za-z{GREEK}]"),
    (r"\p{Foo}", False, ""),
    (r"(?i)intel", True, r"(?i)intel"),
    (r"[[:digit:]]+", True, r"[0-9]+"),
    (r"a{1001}", False, ""),
    (r"(?:a{10}){101}", False, ""),
    (r"(?:a{2}){2}", True, r"(?:a{2}){2}"),
    (r"(?P<n>Gen)", True, r"Gen"),
    (r"(?<n>AMD)", True, r"AMD"),
    (r"\8", False, ""),
    (r"\Z", False, ""),
    (r"x**", False, ""),
    (r"[a-", False, ""),
    (r"^[0-9a-f]{4}$", True, r"^[0-9a-f]{4}\Z"),
    (r"\Qa.b\E", True, r"a\.b"),
    (r"Intel|AMD", True, r"Intel|AMD"),
    (r"^$", True, r"^\Z"),
    (r"", True, r""),
    (r"\x{41}", True, r"A"),
    (r"[\P{LC}]", True, rf"[^A-Za-z{GREEK}]"),
    (r"^\d+$", True, r"^[0-9]+\Z"),
    (r"\p{Assigned}", True, r"."),
    (r"(", False, ""),
    (r"[[:foo:]]", False, ""),
    (r"^v?1\.", True, r"^v?1\."),
]
_TABLE = {go: (ok, py) for go, ok, py in REGEXES}


def table_regex(pattern: str) -> Callable[[str], bool]:
    ok, py = _TABLE[pattern]
    if not ok:
        raise ValueError(pattern)
    return re.compile(py).search  # type: ignore[return-value]


NODE_VALUES = ["GenuineIntel", "AuthenticAMD", "8086", "10de", "0300", "a.b", "axb", "5.15.0-91-generic",
               "1.2.3", "01.2.3", "1.2.3-01", "v2", "x", "", "true", "false", "7", "-3", "99999999999999999999",
               "\u03b1\u03b2\u03b3", "A", "aaaa", "intel", "5", "10", "6.1", "4.19.0", "0", "1"]  # fmt: skip
OPS = ["", "In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "Gt", "Ge", "Lt", "Le", "GtLt", "GeLe", "IsTrue",
       "IsFalse", "Foo"]  # fmt: skip
ELEMENTS = ["a", "b", "c", "vendor"]
FEATURES = ["zz.flags", "zz.attrs", "zz.inst", "zz.multi", "zz.missing", "ZZ.Attrs", "rule.matched"]


NO_VALUE = {"", "Exists", "DoesNotExist", "IsTrue", "IsFalse"}
INTS = ["1", "5", "7", "-3", "0", "10", "8086"]
VERSIONS = ["1", "4.0", "5.15", "1.2.3", "v1", "5.15.0-91-generic", "01.2"]
BAD_NUMBERS = ["x", "1.5", "99999999999999999999", "1.2.3-01", ""]


def gen_expression(rnd: random.Random) -> dict[str, Any]:
    """Mostly well-formed expressions (so most runs reach a verdict), with every kind of NFD error now and then."""
    op = "Foo" if rnd.random() < 0.02 else rnd.choice(OPS[:-1])
    sane = rnd.random() < 0.9
    if op in NO_VALUE:
        n = 0 if sane else rnd.choice([1, 2])
    elif op in ("In", "NotIn", "InRegexp"):
        n = rnd.choice([1, 1, 2, 3]) if sane else 0
    else:
        n = (2 if op in ("GtLt", "GeLe") else 1) if sane else rnd.choice([0, 1, 2, 3])
    typ = ""
    if op == "InRegexp":
        valid = [g for g, ok, _ in REGEXES if ok]
        values = [rnd.choice(valid) if rnd.random() < 0.93 else rnd.choice(REGEXES)[0] for _ in range(n)]
    elif op in ("Gt", "Ge", "Lt", "Le", "GtLt", "GeLe"):
        typ = "version" if rnd.random() < 0.4 else ""
        pool = VERSIONS if typ else INTS
        values = [rnd.choice(pool) if rnd.random() < 0.93 else rnd.choice(BAD_NUMBERS) for _ in range(n)]
        if typ == "" and n == 2 and rnd.random() < 0.8:
            values = [str(x) for x in sorted(rnd.sample(range(-5, 9000), 2))]
    else:
        values = [rnd.choice(NODE_VALUES) for _ in range(n)]
    e: dict[str, Any] = {"op": op}
    if values or rnd.random() < 0.1:
        e["value"] = values
    if typ or rnd.random() < 0.05:
        e["type"] = typ or rnd.choice(["version", "semver"])
    return e


def gen_term(rnd: random.Random) -> dict[str, Any]:
    t: dict[str, Any] = {"feature": rnd.choice(FEATURES)}
    k = rnd.random()
    if k < 0.75:
        t["matchExpressions"] = {rnd.choice(ELEMENTS): gen_expression(rnd) for _ in range(rnd.choice([0, 1, 1, 2]))}
    if k > 0.6:
        t["matchName"] = gen_expression(rnd)
    return t


def gen_spec(rnd: random.Random) -> dict[str, Any]:
    sets = []
    for _ in range(rnd.choice([1, 1, 2])):
        rules = []
        for i in range(rnd.choice([1, 1, 2, 3])):
            r: dict[str, Any] = {"name": f"r{i}"}
            if rnd.random() < 0.8:
                r["matchFeatures"] = [gen_term(rnd) for _ in range(rnd.choice([1, 1, 2]))]
            if rnd.random() < 0.3:
                r["matchAny"] = [{"matchFeatures": [gen_term(rnd)]} for _ in range(rnd.choice([1, 2]))]
            if rnd.random() < 0.3:
                r["vars"] = {rnd.choice(ELEMENTS): rnd.choice(NODE_VALUES)}
            rules.append(r)
        sets.append({"rules": rules})
    return {"version": "v1alpha1", "compatibilities": sets}


def gen_features(rnd: random.Random) -> dict[str, Any]:
    def attrs() -> dict[str, str]:
        return {e: rnd.choice(NODE_VALUES) for e in rnd.sample(ELEMENTS, rnd.randint(0, 3))}

    f: dict[str, Any] = {"flags": {}, "attributes": {}, "instances": {}}
    if rnd.random() < 0.9:
        f["flags"]["zz.flags"] = set(rnd.sample(ELEMENTS, rnd.randint(1, 3)))
    if rnd.random() < 0.9:
        f["attributes"]["zz.attrs"] = attrs() or {"a": "1"}
    if rnd.random() < 0.9:
        f["instances"]["zz.inst"] = [attrs() for _ in range(rnd.randint(1, 3))]
    if rnd.random() < 0.7:
        f["flags"]["zz.multi"] = set(rnd.sample(ELEMENTS, rnd.randint(1, 2)))
        f["attributes"]["zz.multi"] = attrs() or {"b": "2"}
    return f


def engine(spec: dict[str, Any], fd: dict[str, Any]) -> list[list[bool]] | None:
    """nodecompat in NFD mode: per set, each rule's isMatch as in NFD's JSON; None when NFD would stop."""
    f = Features()
    for name, els in fd["flags"].items():
        f.add_flags(name, sorted(els))
    for name, els in fd["attributes"].items():
        f.add_attributes(name, els)
    for name, insts in fd["instances"].items():
        f.set_instances(name, insts)
    try:
        parsed = parse_spec(json.dumps(spec), nfd_compat=True)
    except SpecError as exc:  # nodecompat's own limits only; NFD validates nothing
        return [["spec-error: " + "; ".join(exc.problems)]]  # type: ignore[list-item]
    verdict = evaluate(parsed, f)
    if not verdict.nfd_json:
        return None
    return [[r["isMatch"] for r in s.get("rules", [])] for s in json.loads(verdict.nfd_json)]


def port(spec: dict[str, Any], fd: dict[str, Any]) -> list[list[bool]] | None:
    return Port(table_regex).validate(spec, copy.deepcopy(fd))


def disagree(spec: dict[str, Any], fd: dict[str, Any]) -> bool:
    return engine(spec, fd) != port(spec, fd)


def shrink(spec: dict[str, Any], fd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Greedy: drop list items, dict keys and feature elements while the disagreement stays."""

    def candidates(obj: Any) -> Any:
        if isinstance(obj, list):
            for i in range(len(obj)):
                yield lambda o=obj, i=i: o.pop(i)
            for x in obj:
                yield from candidates(x)
        elif isinstance(obj, dict):
            for k in list(obj):
                if k not in ("feature", "op"):
                    yield lambda o=obj, k=k: o.pop(k)
            for v in obj.values():
                yield from candidates(v)
        elif isinstance(obj, set):
            for x in list(obj):
                yield lambda o=obj, x=x: o.discard(x)

    progress = True
    while progress:
        progress = False
        for which in ("spec", "fd"):
            base = spec if which == "spec" else fd
            n = sum(1 for _ in candidates(base))
            for i in range(n):
                trial_spec, trial_fd = copy.deepcopy(spec), copy.deepcopy(fd)
                target = trial_spec if which == "spec" else trial_fd
                step = next(x for j, x in enumerate(candidates(target)) if j == i)
                step()
                try:
                    still = disagree(trial_spec, trial_fd)
                except Exception:
                    still = False
                if still:
                    spec, fd = trial_spec, trial_fd
                    progress = True
                    break
            if progress:
                break
    return spec, fd


def run(cases: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    failures = []
    for i in range(cases):
        spec, fd = gen_spec(rnd), gen_features(rnd)
        if disagree(spec, fd):
            s, f = shrink(spec, fd)
            failures.append(
                f"case {i} (seed {seed}) disagrees; minimal case:\n  spec: {json.dumps(s)}\n"
                f"  features: {json.dumps(f, default=sorted)}\n  nodecompat: {engine(s, f)}\n  NFD port: {port(s, f)}"
            )
            if len(failures) >= 3:
                break
    return failures


def test_engine_agrees_with_nfd_port() -> None:
    failures = run(CASES, SEED)
    assert not failures, "\n".join(failures)


def test_port_sees_errors_and_matches() -> None:
    """The port is not vacuous: the generator yields runs NFD stops, and matching and failing rules."""
    rnd = random.Random(SEED)
    outcomes = [port(gen_spec(rnd), gen_features(rnd)) for _ in range(300)]
    assert any(o is None for o in outcomes)
    flat = [m for o in outcomes if o for rules in o for m in rules]
    assert True in flat and False in flat
