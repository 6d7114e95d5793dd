"""Every case of NFD's conformance tables (a copy of ../shared/conformance) against our engine."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support_specs import expressions_cases, fake_features, features_from_sections, rules_data

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.expressions import ExpressionError, MatchExpression
from nodecompat.engine.matcher import match_multi, nfd_match_multi, nfd_match_names_multi
from nodecompat.engine.spec import parse_spec


def _expr(d: dict[str, Any]) -> MatchExpression:
    return MatchExpression(
        op=d.get("op", ""), values=list(d.get("value") or d.get("values") or []), type=d.get("type", "")
    )


def _run_expression_case(c: dict[str, Any]) -> bool:
    e = _expr(c)
    if c["level"] == "value":
        return e.compiled().evaluate(c["input"] is not None, c["input"])
    exprs = {c["key"]: e}
    if c["level"] == "flag":
        ok, _ = nfd_match_multi(exprs, set(c["input"]), None, None)
        return ok
    ok, _ = nfd_match_multi(exprs, None, dict(c["input"]), None)
    return ok


@pytest.mark.parametrize("case", expressions_cases(), ids=lambda c: c["id"])
def test_expression_case(case: dict[str, Any]) -> None:
    if case["expect"] == "error":
        with pytest.raises(ExpressionError):
            _run_expression_case(case)
    else:
        assert _run_expression_case(case) is case["expect"]


def _term_inputs(inp: dict[str, Any]) -> tuple[Any, Any, Any]:
    return inp["flags"], inp["attributes"], inp["instances"]


def _run_term_case(c: dict[str, Any]) -> tuple[bool, list[dict[str, str]]]:
    flags, attrs, insts = _term_inputs(c["input"])
    fn = c["function"]
    if "matchName" in c:
        e = _expr(c["matchName"])
        if fn == "MatchKeyNames":
            return nfd_match_names_multi(e, flags or [], None, None)
        if fn == "MatchValueNames":
            return nfd_match_names_multi(e, None, attrs or {}, None)
        if fn == "MatchInstanceAttributeNames":
            return nfd_match_names_multi(e, None, None, insts or [])
        return nfd_match_names_multi(e, flags, attrs, insts)
    exprs = {k: _expr(v) for k, v in c["matchExpressions"].items()}
    if fn == "MatchKeys":
        return nfd_match_multi(exprs, flags or [], None, None)
    if fn == "MatchValues":
        return nfd_match_multi(exprs, None, attrs or {}, None)
    if fn == "MatchInstances":
        return nfd_match_multi(exprs, None, None, insts or [])
    return nfd_match_multi(exprs, flags, attrs, insts)


@pytest.mark.parametrize("case", rules_data()["term_cases"], ids=lambda c: c["id"])
def test_term_case(case: dict[str, Any]) -> None:
    if case["expect"] == "error":
        with pytest.raises(ExpressionError):
            _run_term_case(case)
        return
    ok, elements = _run_term_case(case)
    assert ok is case["expect"]
    if "matched" in case:
        assert elements == case["matched"]


@pytest.mark.parametrize("case", rules_data()["rule_cases"], ids=lambda c: c["id"])
def test_rule_case(case: dict[str, Any]) -> None:
    spec = parse_spec(json.dumps({"version": "v1alpha1", "compatibilities": [{"rules": [case["rule"]]}]}))
    v = evaluate(spec, features_from_sections(case["features"]))
    assert v.sets[0].rules[0].matched is case["expect"]
    assert v.compatible is case["expect"]
    assert v.warnings == []


@pytest.mark.parametrize("case", rules_data()["validator_cases"], ids=lambda c: c["id"])
def test_validator_case_nfd_json_exact(case: dict[str, Any]) -> None:
    spec = parse_spec(json.dumps(case["spec"]))
    v = evaluate(spec, fake_features(), tags=case.get("tags", ()))
    assert v.nfd_json == json.dumps(case["expected_output"], separators=(",", ":"))
    # Our own per-rule verdict agrees with NFD's isMatch.
    for sv, expected in zip(v.sets, case["expected_output"], strict=True):
        assert [r.matched for r in sv.rules] == [r["isMatch"] for r in expected["rules"]]


def test_instances_mismatch_reports_the_closest_instance() -> None:
    """NFD says `name In [instance_2]` held; we say which instance the failing term came closest on."""
    case = next(c for c in rules_data()["validator_cases"] if c["id"] == "instances-mismatch")
    v = evaluate(parse_spec(json.dumps(case["spec"])), fake_features())
    second = v.sets[0].rules[0].match_features[1]
    assert not second.matched
    by_el = {e.element: e for e in second.expressions}
    assert by_el["name"].matched and by_el["name"].instance == "fake.instance[1] name=instance_2"
    assert not by_el["attr_1"].matched
    assert by_el["attr_1"].detail == "wanted In [false], node has true"
    assert by_el["attr_1"].actual == ["true"]


def test_matcher_keeps_per_instance_outcomes() -> None:
    r = match_multi(
        {"name": _expr({"op": "In", "value": ["instance_2"]})},
        None,
        None,
        [{"name": "instance_1"}, {"name": "instance_2"}],
    )
    assert r.instance_matched == [False, True]
    assert r.nfd_matched == {"name"}


def test_the_projects_copy_matches_shared_conformance() -> None:
    """tests/fixtures/conformance is a copy of ../shared/conformance (there in CI): keep them equal."""
    import pytest
    from support_specs import CONFORMANCE, SHARED_CONFORMANCE

    if not SHARED_CONFORMANCE.is_dir():
        pytest.skip(f"{SHARED_CONFORMANCE} is not beside this clone; the copy in {CONFORMANCE} is used as is")
    ours = {p.relative_to(CONFORMANCE): p.read_bytes() for p in CONFORMANCE.rglob("*") if p.is_file()}
    theirs = {p.relative_to(SHARED_CONFORMANCE): p.read_bytes() for p in SHARED_CONFORMANCE.rglob("*") if p.is_file()}
    assert ours == theirs, "refresh tests/fixtures/conformance from ../shared/conformance"
