"""parse_spec: located problems, strict vs NFD compatibility mode, YAML/JSON quirks."""

from __future__ import annotations

import pytest

from nodecompat.engine.spec import SpecError, parse_spec

HEAD = (
    "version: v1alpha1\ncompatibilities:\n- rules:\n  - name: r\n"
    "    matchFeatures:\n    - feature: pci.device\n"
)


def _spec(expressions: str) -> str:
    return HEAD + "      matchExpressions:\n" + expressions


def _problems(text: str, **kw: object) -> list[str]:
    with pytest.raises(SpecError) as ei:
        parse_spec(text, **kw)  # type: ignore[arg-type]
    return ei.value.problems


def test_every_problem_is_reported_with_its_location() -> None:
    text = _spec(
        "        vendor: {op: In}\n"
        "        class: {op: Gt, value: ['1.5']}\n"
        "        device: {op: InRegexp, value: ['(']}\n"
        "        x: {op: Foo}\n"
        "        y: {op: GtLt, value: ['5', '1']}\n"
    )
    probs = _problems(text)
    base = "compatibilities[0].rules[0].matchFeatures[0].matchExpressions"
    assert f"{base}.vendor: In needs at least one value" in probs
    assert any(p.startswith(f"{base}.class: not a number") for p in probs)
    assert (
        f"{base}.device: value[0] \"(\" is not a regexp NFD accepts: error parsing regexp: missing closing ): "
        "`(` (NFD compiles patterns with Go's regexp package)"
    ) in probs
    assert any(p.startswith(f"{base}.x: unknown op 'Foo'") for p in probs)
    assert any(p.startswith(f"{base}.y: invalid expression, value[0] must be less") for p in probs)
    assert len(probs) == 5


def test_nfd_compat_tolerates_lazy_problems_and_lists_them() -> None:
    spec = parse_spec(_spec("        vendor: {op: In}\n"), nfd_compat=True)
    assert spec.compatibilities[0].rules[0].match_features[0].match_expressions["vendor"].op == "In"
    assert any(
        w.startswith("tolerated: ") and "vendor: In needs at least one value" in w for w in spec.warnings
    )


def test_unknown_fields_strict_error_compat_warning() -> None:
    text = HEAD.replace("  - name: r\n", "  - name: r\n    labels: {a: b}\n")
    assert _problems(text) == [
        "compatibilities[0].rules[0].labels: unknown field 'labels'; the fields of a rule are "
        "name, matchFeatures, matchAny, vars, varsTemplate"
    ]
    spec = parse_spec(text, nfd_compat=True)
    assert any("tolerated: compatibilities[0].rules[0].labels" in w for w in spec.warnings)


def test_go_case_insensitive_field_names() -> None:
    text = HEAD.replace("matchFeatures", "MatchFeatures")
    assert "did you mean 'matchFeatures'" in _problems(text)[0]
    spec = parse_spec(text, nfd_compat=True)
    assert spec.compatibilities[0].rules[0].match_features[0].feature == "pci.device"


def test_scalar_value_is_an_error_in_both_modes() -> None:
    text = _spec("        vendor: {op: In, value: 10de}\n")
    for compat in (False, True):
        probs = _problems(text, nfd_compat=compat)
        assert probs == [
            "compatibilities[0].rules[0].matchFeatures[0].matchExpressions.vendor.value: "
            "value must be a list (write value: [10de]), not a string"
        ]


def test_yaml_numbers_become_go_strings_with_a_warning() -> None:
    spec = parse_spec(_spec("        vendor: {op: In, value: [1.10, 8086, true]}\n"))
    e = spec.compatibilities[0].rules[0].match_features[0].match_expressions["vendor"]
    assert e.values == ["1.1", "8086", "true"]
    assert any("1.10 is a YAML number" in w for w in spec.warnings)


def test_version_and_type_checks() -> None:
    spec = parse_spec(HEAD.replace("version: v1alpha1", "version: v2"))
    assert any("'v2' is not 'v1alpha1'" in w for w in spec.warnings)
    probs = _problems(_spec("        vendor: {op: Gt, value: ['1'], type: semver}\n"))
    assert "unsupported value type 'semver'" in probs[0]
    probs = _problems(_spec("        vendor: {op: Gt, value: ['1.2.3.4'], type: version}\n"))
    assert probs[0].endswith(
        'value[0] "1.2.3.4" is not a version NFD accepts (invalid semantic version; '
        "NFD parses versions with Masterminds/semver v3.5.0 NewVersion)"
    )


def test_vars_template_is_rejected_naming_the_rule() -> None:
    text = HEAD.replace("  - name: r\n", "  - name: r\n    varsTemplate: '{{ .x }}'\n")
    assert _problems(text) == [
        "compatibilities[0].rules[0].varsTemplate: varsTemplate is not supported (rule 'r'); "
        "set fixed values with `vars` instead"
    ]


def test_json_text_and_empty_match_expressions() -> None:
    spec = parse_spec(
        '{"compatibilities": [{"rules": [{"matchFeatures": [{"feature": "a.b", "matchExpressions": {}}]}]}]}'
    )
    t = spec.compatibilities[0].rules[0].match_features[0]
    assert t.match_expressions == {} and t.match_name is None
    assert any("version: missing" in w for w in spec.warnings)


def test_weight_type_and_duplicate_keys() -> None:
    probs = _problems("compatibilities:\n- weight: '10'\n  rules: []\n")
    assert probs == ["compatibilities[0].weight: weight must be an integer, not a string"]
    probs = _problems(_spec("        vendor: {op: Exists}\n        vendor: {op: Exists}\n"))
    assert probs == ["compatibilities[0].rules[0].matchFeatures[0].matchExpressions.vendor: duplicate key"]


def test_not_a_mapping_and_bad_yaml() -> None:
    assert _problems("- a\n- b\n") == ["a spec must be a mapping, not a list"]
    assert _problems("a: [\n")[0].startswith("not valid YAML or JSON")
