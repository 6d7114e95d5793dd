"""spec_load: libyaml events composed into plain data; aliases, merge keys, tags, keys, limits."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from support_specs import GPU_SPEC

from nodecompat.engine import spec_load
from nodecompat.engine.spec import SpecError, load_document, parse_spec
from nodecompat.engine.spec_load import DUPS, LoadError, Scalar


def _load(text: str, **kw: Any) -> Any:
    return load_document(text, **kw)


def _problem(text: str, **kw: Any) -> str:
    with pytest.raises(SpecError) as ei:
        load_document(text, **kw)
    assert len(ei.value.problems) == 1
    return ei.value.problems[0]


def test_libyaml_is_used_when_available() -> None:
    assert spec_load.EVENT_LOADER is yaml.CSafeLoader


def test_scalars_resolve_as_yaml_1_1_and_keep_their_spelling() -> None:
    data = _load("a: [1, 1.10, true, yes, ~, null, '5', 2001-01-01, 0x1f, <<, =, .inf, !!str 7]\n")
    assert data["a"] == [
        Scalar(1, "1"),
        Scalar(1.1, "1.10"),
        Scalar(True, "true"),
        Scalar(True, "yes"),
        Scalar(None, "~"),
        Scalar(None, "null"),
        "5",
        "2001-01-01",
        Scalar(31, "0x1f"),
        "<<",
        "=",
        Scalar(float("inf"), ".inf"),
        "7",
    ]


def test_aliases_expand_to_the_anchored_value() -> None:
    text = GPU_SPEC.replace('vendor: {op: In, value: ["10de"]}', 'vendor: &nv {op: In, value: ["10de"]}').replace(
        '        class: {op: In, value: ["0302"]}', '        class: {op: In, value: ["0302"]}\n        v2: *nv'
    )
    for compat in (False, True):
        spec = parse_spec(text, nfd_compat=compat)
        exprs = spec.compatibilities[0].rules[0].match_features[0].match_expressions
        assert exprs is not None and exprs["v2"].values == ["10de"] and exprs["v2"].op == "In"


def test_merge_keys_follow_go_yaml_v2() -> None:
    data = _load("base: &b {op: In, value: [x], type: ''}\ne: {<<: *b, op: NotIn}\nf: {op: NotIn, <<: *b}\n")
    assert data["e"] == {"op": "NotIn", "value": ["x"], "type": ""}
    assert data["f"]["op"] == "In"  # applied in document order: the later key wins
    data = _load("a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nc: {<<: [*a, *b]}\n")
    assert data["c"] == {"x": Scalar(1, "1"), "y": Scalar(1, "1"), "z": Scalar(2, "2")}  # earlier maps win
    assert "merge key (<<) needs a mapping" in _problem("a: &a [1]\nb: {<<: *a}\n")


def test_duplicate_keys_are_listed_and_the_last_wins() -> None:
    data = _load("a: 1\nb: 2\na: 3\n")
    assert data["a"] == Scalar(3, "3") and data[DUPS] == ["a"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: *nope\n", "line 1: alias *nope refers to no complete anchor above it"),
        ("a: &x [*x]\n", "line 1: alias *x refers to no complete anchor above it"),
        ("? [a, b]\n: c\n", "line 1: a mapping key must be a string or number, not a collection"),
        ("a: &k [1]\n*k : 2\n", "line 2: a mapping key must be a string or number, not a collection"),
        ("a: !!binary aGVsbG8=\n", "line 1: YAML tag tag:yaml.org,2002:binary is not accepted"),
        ("a: !!python/object:os.system {}\n", "line 1: YAML tag tag:yaml.org,2002:python/object:os.system"),
        ("a: !!int abc\n", "line 1: 'abc' is not a valid int"),
        ("a: 1\n---\nb: 2\n", "the spec holds more than one YAML document; put one spec per file"),
        ("a: [\n", "not valid YAML or JSON"),
    ],
)
def test_bad_documents_are_located_errors(text: str, problem: str) -> None:
    assert _problem(text).startswith(problem)


def test_alias_depth_counts_toward_the_nesting_limit() -> None:
    deep = "a: &d " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*d" + "]" * 30 + "\n"
    assert _problem(deep) == "line 2: nesting deeper than 64 levels (through *d)"


def test_node_budget_applies_to_plain_yaml_and_json() -> None:
    with pytest.raises(LoadError, match="line 1: more than 30 YAML nodes"):
        spec_load.load_document("a: [" + "1, " * 50 + "1]\n", max_nodes=30)
    with pytest.raises(LoadError, match="more than 30 JSON values"):
        spec_load.load_document("[" + "1," * 50 + "1]", max_nodes=30)


def test_pure_python_fallback_composes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [GPU_SPEC, "a: &a {x: [1, 2.5, yes]}\nb: {<<: *a, y: ~}\nc: *a\n", "a: 1\na: 2\n"]
    fast = [_load(t) for t in texts]
    monkeypatch.setattr(spec_load, "EVENT_LOADER", yaml.SafeLoader)
    assert [_load(t) for t in texts] == fast
    with pytest.raises(LoadError, match=r"line 3: YAML alias expansion too large \(billion laughs\?\)"):
        spec_load.load_document("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b]\n", max_nodes=30)
