"""Hostile specs are refused (with which message) or evaluated (with which verdict); random specs never crash.

No timed asserts: each hostile case runs under a hang guard that fails only if it has not finished
after a generous HANG_SECONDS. The timing figures are in bench/bench_hostile.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_specs import (
    at_the_caps_spec,
    billion_laughs_spec,
    catastrophic_regex_case,
    deep_nesting_specs,
    one_mib_spec,
    pci_node,
    ten_mib_spec,
)

from nodecompat.engine.evaluate import EvaluationTimeout, evaluate
from nodecompat.engine.expressions import OPS
from nodecompat.engine.limits import MAX_EXPRESSIONS, MAX_REGEXES, MAX_RULES, MAX_VALUES_PER_EXPRESSION, MAX_YAML_NODES
from nodecompat.engine.spec import SpecError, parse_spec
from nodecompat.features import Features

HANG_SECONDS = 60.0


def _guarded(fn: Callable[[], Any]) -> Any:
    """fn() in a worker thread; its result or SpecError. Fails the test if it hangs past HANG_SECONDS."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = fn()
        except SpecError as exc:
            box["out"] = exc
        except BaseException as exc:  # re-raised in the test thread
            box["raised"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(HANG_SECONDS)
    if t.is_alive():
        pytest.fail(f"still running after {HANG_SECONDS:.0f} s")
    if "raised" in box:
        raise box["raised"]
    return box["out"]


def test_ten_mib_spec_is_refused_before_parsing() -> None:
    out = _guarded(lambda: parse_spec(ten_mib_spec()))
    assert isinstance(out, SpecError) and "over the 1048576-byte limit" in out.problems[0]


@pytest.mark.parametrize("text", list(deep_nesting_specs().values()), ids=list(deep_nesting_specs()))
def test_deep_nesting_is_refused(text: str) -> None:
    out = _guarded(lambda: parse_spec(text))
    assert isinstance(out, SpecError) and "nesting deeper than 64 levels" in out.problems[0]


@pytest.mark.parametrize("compat", [False, True])
def test_billion_laughs_is_refused_in_both_modes(compat: bool) -> None:
    out = _guarded(lambda: parse_spec(billion_laughs_spec(), nfd_compat=compat))
    assert isinstance(out, SpecError)
    assert out.problems[0].startswith("line 6: YAML alias expansion too large (billion laughs?)")


def test_catastrophic_regex_is_linear_with_re2() -> None:
    spec, f = catastrophic_regex_case()
    v = _guarded(lambda: evaluate(parse_spec(spec), f))
    assert not v.compatible
    assert v.sets[0].rules[0].match_features[0].expressions[0].detail.startswith("wanted InRegexp [(a+)+$]")


def test_one_mib_spec_is_refused_by_the_node_budget() -> None:
    out = _guarded(lambda: parse_spec(one_mib_spec()))
    assert isinstance(out, SpecError)
    assert out.problems[0].endswith(f"more than {MAX_YAML_NODES} YAML nodes")


@pytest.mark.parametrize("kind", ["in", "gt", "regex", "name"])
def test_spec_at_every_cap_is_accepted_and_evaluated(kind: str) -> None:
    spec = _guarded(lambda: parse_spec(at_the_caps_spec(kind)))
    assert not isinstance(spec, SpecError), spec
    v = _guarded(lambda: evaluate(spec, pci_node(200)))
    assert sum(len(r.match_features) for r in v.sets[0].rules) == MAX_EXPRESSIONS
    assert v.compatible == (kind == "in")
    if kind == "gt":  # an error on every device of every term: a bounded number of warnings
        assert len(v.warnings) <= 60
        assert any(w.startswith("and ") and w.endswith("more evaluation warnings like these") for w in v.warnings)


def _rules(n_rules: int, expr: str = "{op: Exists}") -> str:
    rule = "  - matchFeatures:\n    - feature: a.b\n      matchExpressions: {x: " + expr + "}\n"
    return "compatibilities:\n- rules:\n" + rule * n_rules


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_rules(MAX_RULES + 1), f"compatibilities[0].rules[{MAX_RULES}]: the spec has more than {MAX_RULES} rules"),
        (
            "compatibilities:\n" + "- rules: []\n" * 257,
            "compatibilities[256]: the spec has more than 256 compatibility sets",
        ),
        (
            "compatibilities:\n- rules:\n  - matchFeatures:\n    - feature: a.b\n      matchExpressions:\n"
            + "".join(f"        x{i}: {{op: Exists}}\n" for i in range(MAX_EXPRESSIONS + 1)),
            f"compatibilities[0].rules[0].matchFeatures[0].matchExpressions.x{MAX_EXPRESSIONS}: "
            f"the spec has more than {MAX_EXPRESSIONS} match expressions",
        ),
        (
            _rules(1, "{op: In, value: [" + ",".join(["v"] * (MAX_VALUES_PER_EXPRESSION + 1)) + "]}"),
            "compatibilities[0].rules[0].matchFeatures[0].matchExpressions.x.value: "
            f"{MAX_VALUES_PER_EXPRESSION + 1} values, over the limit of {MAX_VALUES_PER_EXPRESSION}",
        ),
        (
            _rules(1, "{op: InRegexp, value: [" + ",".join(["a"] * (MAX_REGEXES + 1)) + "]}"),
            "compatibilities[0].rules[0].matchFeatures[0].matchExpressions.x.value: "
            f"the spec has more than {MAX_REGEXES} InRegexp patterns",
        ),
    ],
    ids=["rules", "sets", "expressions", "values", "regexes"],
)
def test_complexity_caps_are_located_spec_errors(text: str, problem: str) -> None:
    for compat in (False, True):
        out = _guarded(lambda c=compat: parse_spec(text, nfd_compat=c))  # type: ignore[misc]
        assert isinstance(out, SpecError)
        assert out.problems[-1].startswith(problem), out.problems


def test_evaluation_past_its_deadline_raises_evaluation_timeout() -> None:
    spec = parse_spec(_rules(3))
    f = Features()
    f.add_attributes("a.b", {"x": "1"})
    assert evaluate(spec, f, deadline=time.monotonic() + 3600).compatible
    with pytest.raises(EvaluationTimeout, match=r"compatibilities\[0\]\.rules\[0\]") as ei:
        evaluate(spec, f, deadline=time.monotonic() - 1)
    assert isinstance(ei.value, TimeoutError)


def test_two_hundred_thousand_tags_are_not_echoed_in_full() -> None:
    tags = [f"t{i}" for i in range(200_000)]
    v = _guarded(lambda: evaluate(parse_spec(_rules(1)), Features(), tags=tags))
    assert v.sets == []
    assert v.warnings == [
        "no compatibility set has a tag in t0, t1, t2, t3, t4 and 199995 more; nothing was evaluated"
    ]


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
