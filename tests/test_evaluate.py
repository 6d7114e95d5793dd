"""evaluate(): overall answer, score, tags, unknown facts, node-data errors, vars and reasons."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from support_specs import GPU_SPEC, gpu_node

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.expressions import OPS, CompiledExpression, ExpressionError, MatchExpression
from nodecompat.engine.spec import parse_spec
from nodecompat.engine.verdict import Verdict
from nodecompat.features import Features


def test_gpu_node_passes_with_best_weight_and_reports_the_instance() -> None:
    v = evaluate(parse_spec(GPU_SPEC), gpu_node())
    assert v.compatible and v.score == 10
    assert [(s.passed, s.rules_matched, s.rules_total) for s in v.sets] == [(True, 2, 2), (True, 1, 1)]
    gpu_term = v.sets[0].rules[0].match_features[0]
    assert {e.instance for e in gpu_term.expressions} == {"pci.device[2] address=0000:02:00.0"}
    assert [e.actual for e in gpu_term.expressions] == [["10de"], ["0302"]]


def test_failed_instance_term_reports_closest_instance() -> None:
    f = gpu_node()
    f.instances["pci.device"].elements[2].attributes["class"] = "0300"
    v = evaluate(parse_spec(GPU_SPEC), f, tags=["gpu"])
    assert not v.compatible and v.score == 0 and len(v.sets) == 1
    by = {e.element: e for e in v.sets[0].rules[0].match_features[0].expressions}
    assert by["vendor"].matched and not by["class"].matched
    assert by["class"].instance == "pci.device[2] address=0000:02:00.0"
    assert by["class"].detail == "wanted In [0302], node has 0300"


def test_version_type_drops_prerelease() -> None:
    f = gpu_node()
    f.attributes["kernel.version"].elements["full"] = "5.3.18-150300-default"
    v = evaluate(parse_spec(GPU_SPEC), f, tags=["gpu"])
    kernel = v.sets[0].rules[1]
    assert not kernel.matched
    assert (
        kernel.match_features[0].expressions[0].detail
        == "wanted Ge [5.4] (version), node has 5.3.18-150300-default"
    )


def test_unknown_feature_is_not_a_silent_mismatch() -> None:
    f = gpu_node()
    del f.instances["pci.device"]
    v = evaluate(parse_spec(GPU_SPEC), f, tags=["gpu"], unknown={"pci.device": "probe pci failed: EACCES"})
    s = v.sets[0]
    assert not s.passed and s.unknown
    assert s.rules[0].unknown and not s.rules[0].matched
    assert all(
        e.unknown and e.detail == "unknown: probe pci failed: EACCES"
        for e in s.rules[0].match_features[0].expressions
    )
    assert v.unknown_facts == ["pci.device: probe pci failed: EACCES"]


def test_unknown_does_not_mark_a_set_that_fails_anyway() -> None:
    f = gpu_node()
    f.attributes["kernel.version"].elements["full"] = "4.19.0"
    v = evaluate(parse_spec(GPU_SPEC), f, tags=["gpu"], unknown={"pci.device": "probe pci failed"})
    assert v.sets[0].rules[0].unknown and not v.sets[0].rules[1].matched
    assert not v.sets[0].unknown


def test_non_numeric_node_data_is_a_warning_not_a_crash() -> None:
    spec = parse_spec(
        "compatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n"
        "    - feature: kernel.version\n      matchExpressions:\n        major: {op: Gt, value: ['4']}\n"
    )
    f = Features()
    f.add_attributes("kernel.version", {"major": "six"})
    v = evaluate(spec, f)
    assert not v.compatible
    e = v.sets[0].rules[0].match_features[0].expressions[0]
    assert not e.matched and e.detail == 'cannot evaluate Gt [4]: not a number "six"'
    assert v.nfd_json == ""
    assert any("cannot evaluate on this node" in w for w in v.warnings)
    assert any(w == 'nfd compat validate-node would stop here with: not a number "six"' for w in v.warnings)


def test_lazy_spec_problem_in_compat_mode_errors_only_on_present_element() -> None:
    text = (
        "compatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n"
        "    - feature: cpu.model\n      matchExpressions:\n        {el}: {{op: In}}\n"
    )
    f = Features()
    f.add_attributes("cpu.model", {"vendor_id": "Intel"})
    absent = evaluate(parse_spec(text.format(el="missing"), nfd_compat=True), f)
    assert absent.nfd_json.startswith('[{"rules":[{"name":"r","isMatch":false')
    present = evaluate(parse_spec(text.format(el="vendor_id"), nfd_compat=True), f)
    assert (
        present.nfd_json == ""
        and "must be non-empty" in present.sets[0].rules[0].match_features[0].expressions[0].detail
    )


def test_vars_published_to_rule_matched_even_when_match_any_fails() -> None:
    spec = parse_spec(
        json.dumps(
            {
                "compatibilities": [
                    {
                        "rules": [
                            {
                                "name": "a",
                                "vars": {"x": "true"},
                                "matchAny": [{"matchFeatures": [{"feature": "no.such"}]}],
                            },
                            {
                                "name": "b",
                                "matchFeatures": [
                                    {"feature": "rule.matched", "matchExpressions": {"x": {"op": "IsTrue"}}}
                                ],
                            },
                            {"name": "c", "vars": {"y": "true"}, "matchFeatures": [{"feature": "no.such"}]},
                            {
                                "name": "d",
                                "matchFeatures": [
                                    {"feature": "rule.matched", "matchExpressions": {"y": {"op": "Exists"}}}
                                ],
                            },
                        ]
                    }
                ]
            }
        )
    )
    v = evaluate(spec, Features())
    assert [r.matched for r in v.sets[0].rules] == [False, True, False, False]
    assert v.sets[0].rules[0].vars == {"x": "true"} and v.sets[0].rules[2].vars == {}


def test_tags_filter_and_empty_result() -> None:
    v = evaluate(parse_spec(GPU_SPEC), gpu_node(), tags=["nope"])
    assert v.sets == [] and not v.compatible and v.nfd_json == "[]"
    assert any("no compatibility set has a tag" in w for w in v.warnings)


def test_missing_feature_and_match_name_details() -> None:
    spec = parse_spec(
        "compatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n"
        "    - feature: cpu.cpuid\n      matchName: {op: InRegexp, value: ['^AVX512']}\n"
        "    - feature: memory.nv\n      matchExpressions: {devtype: {op: Exists}}\n"
    )
    v = evaluate(spec, gpu_node())
    name_e, nv_e = (t.expressions[0] for t in v.sets[0].rules[0].match_features)
    assert name_e.matcher_type == "matchName" and name_e.actual == ["AVX", "AVX2", "SSE4"]
    assert name_e.detail == "wanted a name InRegexp [^AVX512], node has AVX, AVX2, SSE4"
    assert nv_e.detail == "feature memory.nv not present on this node"  # provided by a probe, absent here


def test_verdict_round_trips_through_dict() -> None:
    v = evaluate(parse_spec(GPU_SPEC), gpu_node(), unknown={"cpu.cpuid": "probe cpu failed"})
    d = v.to_dict()
    assert Verdict.from_dict(json.loads(json.dumps(d))).to_dict() == d


# -- the column evaluator is exactly evaluate() per value ------------------------------------------
_node_values = st.lists(
    st.one_of(st.none(), st.sampled_from(["1", "-3", "10de", "true", "false", "", "1.2.3", "abc", "x1"])),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    op=st.sampled_from([*OPS, "Bogus"]),
    values=st.lists(st.sampled_from(["1", "5", "10de", "true", "^x", "(", "1.2", "abc"]), max_size=3),
    typ=st.sampled_from(["", "version", "odd"]),
    column=_node_values,
    shared=st.booleans(),
)
def test_column_matches_evaluate_value_by_value(
    op: str, values: list[str], typ: str, column: list[str | None], shared: bool
) -> None:
    c = CompiledExpression(MatchExpression(op, values, typ))
    want: list[bool] = []
    want_errors: dict[int, str] = {}
    for i, v in enumerate(column):
        try:
            want.append(c.evaluate(v is not None, v))
        except ExpressionError as exc:
            want.append(False)
            want_errors[i] = str(exc)
    got, errors = c.column(column, {} if shared else None)
    assert got == want and errors == want_errors
    assert all(type(b) is bool for b in got)
