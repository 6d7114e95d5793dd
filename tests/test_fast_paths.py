"""The evaluator's fast paths give exactly what the general paths give.

- matchName over a set (In, NotIn, literal InRegexp patterns as prefix/suffix/equality/substring
  tests) against one RE2 search per name (CompiledExpression.evaluate), for random names and patterns;
- the planned dataclass -> protobuf fill (wire.to_message) against the generic descriptor walk it
  replaced, byte for byte, on real verdicts of the fixture hosts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st
from support_specs import fake_features, rules_data

from nodecompat import wire
from nodecompat.engine import matcher
from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.expressions import MatchExpression
from nodecompat.engine.spec import parse_spec
from nodecompat.features import Features
from nodecompat.hostroot import HostRoot
from nodecompat.probes.runner import probe_once
from nodecompat.v1 import validation_pb2

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
ALPHABET = "AVXavx512_-.:^$*[]()|?+\\0 "

names_st = st.lists(st.text(alphabet="AVXavx512_-.: ", max_size=8), max_size=20)
literal_st = st.builds(
    lambda head, body, tail: ("^" if head else "") + body + ("$" if tail else ""),
    st.booleans(),
    st.text(alphabet="AVXavx512_-: ", max_size=5),
    st.booleans(),
)
pattern_st = st.one_of(literal_st, st.text(alphabet=ALPHABET, max_size=6))


def _general(expr: MatchExpression, flags: list[str], attrs: dict[str, str], insts: list[dict[str, str]]):
    saved = matcher.name_plan
    matcher.name_plan = lambda e: None  # type: ignore[assignment]
    try:
        return matcher.match_names_multi(expr, set(flags), attrs, insts)
    finally:
        matcher.name_plan = saved  # type: ignore[assignment]


@settings(max_examples=400, deadline=None)
@given(
    op=st.sampled_from(["In", "NotIn", "InRegexp"]),
    values=st.lists(pattern_st, min_size=1, max_size=3),
    flags=names_st,
    attrs=st.dictionaries(st.text(alphabet="AVXavx_", max_size=5), st.text(max_size=3), max_size=5),
    insts=st.lists(st.dictionaries(st.text(alphabet="AVXavx_", max_size=4), st.just("v"), max_size=3), max_size=3),
)
def test_name_plans_match_the_general_path(op, values, flags, attrs, insts) -> None:  # type: ignore[no-untyped-def]
    expr = MatchExpression(op=op, values=values)
    fast = matcher.match_names_multi(expr, set(flags), attrs, insts)
    slow = _general(MatchExpression(op=op, values=values), flags, attrs, insts)
    assert fast == slow


def test_literal_regexes_get_a_plan_and_others_do_not() -> None:
    assert matcher.name_plan(MatchExpression(op="InRegexp", values=["^AVX", "512$", "^SSE4_2$"])) is not None
    for pattern in ("^AVX.*", "avx|sse", "(?i)avx", "a+", "[A]", "\\d"):
        assert matcher.name_plan(MatchExpression(op="InRegexp", values=[pattern])) is None


def _generic_to_message(obj: Any, msg_cls: type[Message]) -> Message:
    """The descriptor walk wire.to_message used before plans (kept here as the reference)."""
    msg = msg_cls()
    for fd in msg.DESCRIPTOR.fields:
        if not hasattr(obj, fd.name):
            continue
        value = getattr(obj, fd.name)
        if value is None:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(msg, fd.name).update(value)
        elif fd.message_type is not None:
            sub_cls = GetMessageClass(fd.message_type)
            if fd.is_repeated:
                getattr(msg, fd.name).extend(_generic_to_message(item, sub_cls) for item in value)
            else:
                getattr(msg, fd.name).CopyFrom(_generic_to_message(value, sub_cls))
        elif fd.is_repeated:
            getattr(msg, fd.name).extend(value)
        else:
            setattr(msg, fd.name, value)
    return msg


SPEC = """
version: v1alpha1
compatibilities:
- description: gpu
  tag: gpu
  weight: 10
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
    - feature: cpu.cpuid
      matchName: {op: InRegexp, value: ["^AVX"]}
  - name: kernel
    vars: {k: v}
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Ge, value: ["5"]}
    - feature: no.such.feature
      matchExpressions:
        x: {op: Exists}
- description: any
  weight: 1
  rules:
  - name: any of
    matchAny:
    - matchFeatures:
      - feature: kernel.config
        matchExpressions:
          NUMA: {op: In, value: ["y"]}
    - matchFeatures:
      - feature: cpu.model
        matchExpressions:
          vendor_id: {op: In, value: [Intel, AMD]}
"""


@pytest.mark.parametrize("host", ["h100-server", "amd-mi300", "plain-vm"])
def test_planned_fill_equals_the_descriptor_walk(host: str) -> None:
    rnd = probe_once(HostRoot(HOSTS / host))
    verdict = evaluate(parse_spec(SPEC), rnd.features, unknown=rnd.unknown_features())
    fast = wire.to_message(verdict, validation_pb2.ValidationReport)
    slow = _generic_to_message(verdict, validation_pb2.ValidationReport)
    assert fast == slow
    assert fast.SerializeToString(deterministic=True) == slow.SerializeToString(deterministic=True)
    details = [e.detail for r in fast.sets[0].rules for t in r.match_features for e in t.expressions]
    assert len(fast.sets) == 2 and all(details)


def _cases() -> list[tuple[str, str, Features]]:
    f = Features()
    f.add_attributes("kernel.version", {"major": "six"})
    g = Features()
    g.add_attributes("cpu.model", {"vendor_id": "Intel"})
    gt = "compatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n    - feature: kernel.version\n" \
         "      matchExpressions:\n        major: {op: Gt, value: ['4']}\n"
    lazy = "compatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n    - feature: cpu.model\n" \
           "      matchExpressions:\n        vendor_id: {op: In}\n"
    out = [("nfd stops: not a number", gt, f), ("nfd stops: lazy op error", lazy, g)]
    out += [(c["id"], json.dumps(c["spec"]), fake_features()) for c in rules_data()["validator_cases"]]
    return out


@pytest.mark.parametrize(("name", "text", "features"), _cases(), ids=lambda x: x if isinstance(x, str) else "")
def test_without_nfd_json_only_nfd_json_differs(name: str, text: str, features: Features) -> None:
    spec = parse_spec(text, nfd_compat=True)
    full = evaluate(spec, features).to_dict()
    lean = evaluate(spec, features, with_nfd_json=False).to_dict()
    assert lean.pop("nfd_json") == ""
    full.pop("nfd_json")
    assert lean == full
