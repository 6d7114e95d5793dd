"""Hostile specs are refused or evaluated quickly; random specs never crash and are deterministic.

Times are printed, and only a generous sanity bound (5 s) is asserted, so a hang fails but a slow
machine does not.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodecompat.evaluate import evaluate
from nodecompat.expressions import OPS
from nodecompat.features import Features
from nodecompat.spec import SpecError, parse_spec

SANITY_SECONDS = 5.0


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        out = fn()
    except SpecError as exc:
        out = exc
    return out, time.perf_counter() - t0


def test_ten_mib_spec_is_refused_before_parsing() -> None:
    out, dt = _timed(lambda: parse_spec("a" * (10 << 20)))
    print(f"10 MiB refused in {dt:.4f}s")
    assert isinstance(out, SpecError) and "over the 1048576-byte limit" in out.problems[0]
    assert dt < SANITY_SECONDS


@pytest.mark.parametrize(
    "text",
    ["[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "}" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000],
)
def test_deep_nesting_is_refused(text: str) -> None:
    out, dt = _timed(lambda: parse_spec(text))
    print(f"10,000-deep nesting refused in {dt:.4f}s")
    assert isinstance(out, SpecError) and "nesting deeper than 64 levels" in out.problems[0]
    assert dt < SANITY_SECONDS


def test_billion_laughs_is_refused() -> None:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in "bcdefghi":
        prev = chr(ord(i) - 1)
        lol += (
            f"{i}: &{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        )
    out, dt = _timed(lambda: parse_spec(lol))
    print(f"billion laughs refused in {dt:.4f}s")
    assert isinstance(out, SpecError) and "anchors" in out.problems[0]
    assert dt < SANITY_SECONDS


def test_catastrophic_regex_is_linear_with_re2() -> None:
    spec = parse_spec(
        "compatibilities:\n- rules:\n  - matchFeatures:\n    - feature: x.y\n"
        "      matchExpressions: {v: {op: InRegexp, value: ['(a+)+$']}}\n"
    )
    f = Features()
    f.add_attributes("x.y", {"v": "a" * 100_000 + "b"})
    v, dt = _timed(lambda: evaluate(spec, f))
    print(f"(a+)+$ against 100 KB evaluated in {dt:.4f}s")
    assert not v.compatible
    assert dt < SANITY_SECONDS


# -- property tests --------------------------------------------------------------------------------
_names = st.sampled_from(["a", "b", "vendor", "class", "AVX", "x"])
_vals = st.lists(
    st.sampled_from(["1", "2", "10de", "true", "false", "1.2.3", "v2", "(", "-3", "x"]), max_size=3
)
_expr = st.fixed_dictionaries(
    {"op": st.sampled_from([*OPS, "Bogus"])},
    optional={"value": _vals, "type": st.sampled_from(["", "version", "odd"])},
)
_term = st.fixed_dictionaries(
    {"feature": st.sampled_from(["f.flag", "f.attr", "f.inst", "f.none", "rule.matched", "F.Attr"])},
    optional={"matchExpressions": st.dictionaries(_names, _expr, max_size=3), "matchName": _expr},
)
_rule = st.fixed_dictionaries(
    {"name": st.sampled_from(["r1", "r2"])},
    optional={
        "matchFeatures": st.lists(_term, max_size=3),
        "matchAny": st.lists(
            st.fixed_dictionaries({"matchFeatures": st.lists(_term, max_size=2)}), max_size=2
        ),
        "vars": st.dictionaries(_names, st.sampled_from(["true", "false", "1"]), max_size=2),
    },
)
_spec = st.fixed_dictionaries(
    {
        "compatibilities": st.lists(
            st.fixed_dictionaries(
                {"rules": st.lists(_rule, max_size=3)},
                optional={"tag": st.sampled_from(["a", "b"]), "weight": st.integers(-5, 50)},
            ),
            max_size=3,
        )
    }
)
_feature_values = st.sampled_from(["1", "2", "10de", "true", "abc", "1.2.3", "", "-7"])
_features = st.fixed_dictionaries(
    {
        "flags": st.lists(_names, max_size=4),
        "attrs": st.dictionaries(_names, _feature_values, max_size=4),
        "insts": st.lists(st.dictionaries(_names, _feature_values, max_size=3), max_size=3),
    }
)


def _build(fd: dict[str, Any]) -> Features:
    f = Features()
    f.add_flags("f.flag", fd["flags"])
    f.add_attributes("f.attr", fd["attrs"])
    f.set_instances("f.inst", fd["insts"])
    return f


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_spec, fd=_features, compat=st.booleans(), tags=st.lists(st.sampled_from(["a", "b"]), max_size=1))
def test_random_specs_end_in_a_verdict_or_spec_error_deterministically(
    spec: dict[str, Any], fd: dict[str, Any], compat: bool, tags: list[str]
) -> None:
    text = json.dumps(spec)
    try:
        parsed = parse_spec(text, nfd_compat=compat)
    except SpecError as exc:
        assert exc.problems
        return
    unknown = {"f.inst": "probe failed"} if len(fd["flags"]) % 2 else None
    a = evaluate(parsed, _build(fd), tags=tags, unknown=unknown)
    b = evaluate(parse_spec(text, nfd_compat=compat), _build(fd), tags=tags, unknown=unknown)
    assert a.to_dict() == b.to_dict()
    assert a.compatible == any(s.passed for s in a.sets)
    if a.nfd_json:
        assert len(json.loads(a.nfd_json)) == len(a.sets)
