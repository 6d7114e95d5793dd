"""Fuzzing the spec path end to end (issue 8 item 9): loader, builder, evaluator, response building.

Every input must end in a Spec (then a verdict, a ValidationReport message, NFD's JSON) or a SpecError
with located problems that fit a gRPC status: nothing else may escape (an escaped exception reaches
callers as UNKNOWN). Used by tests/test_fuzz_specs.py with a small CI budget and by `make fuzz`
(FUZZ_EXAMPLES=... for longer runs).

The strategies aim where the bugs were: YAML tags with empty or odd values (`!!int` alone was an
IndexError), numbers outside float32 (`1.0e+39` was a ValueError), anchors and merges, wrong types in
every field, Go-regexp syntax, versions, and raw text mixing YAML's indicators.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from nodecompat import wire
from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import SpecError, parse_spec
from nodecompat.features import Features
from nodecompat.server.errors import DEFAULT_STATUS_DETAILS_BYTES, spec_error_status
from nodecompat.v1 import validation_pb2

SCALARS = [
    "!!int", "!!float", "!!bool", "!!null", "!!str", "!!int ''", "!!float x", "!!bool maybe", "!!null x",
    "!!binary aGk=", "!!timestamp 2001-12-14", "!custom x", "!!python/name:os.system", "!!set {a}",
    "!!omap [a: 1]", "1.0e+39", "-1.0e+39", "1e400", "-.inf", ".nan", ".NaN", "0x1F", "0o17", "017", "1_000",
    "0b101", "9223372036854775808", "-9223372036854775809", "1.10", "~", "null", "Null", "yes", "No", "on",
    "''", '""', '"\\u0000"', '"\\ud800"', "'\u00e9'", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "12:30:45",
    "Exists", "In", "InRegexp", "Gt", "GtLt", "IsTrue", "version", "[]", "{}", "[1, [2]]", "{a: b}", "x",
    "-", "? k", "&a v", "*a", "*nope", "|\n  block", ">\n  folded", "'1'", "'5.4'", "v1alpha1",
]  # fmt: skip
REGEXES = [
    r"^Genuine\C", r"\p{Greek}", r"\p{greek}", r"\pL", r"\p{Foo}", r"(?i)abc", r"(?P<n>x)", r"(?<n>x)", r"(?'n'x)",
    r"a{1000}", r"a{1001}", r"(?:a{10}){101}", r"[[:alpha:]]", r"[[:foo:]]", r"\Q*\E", r"\8", r"\x{10FFFF}",
    r"\x{110000}", r"(", r")", r"[a-", r"a**", r"(?U)a+?", r"\z", r"\Z", r"[\P{LC}]", r"\p{Assigned}", "",
    r"\\", "\\", r"(?i)\W", r"a|*", r".*", r"^$", r"[^\n]", r"\b\B", r"(?s:.)", r"(?m)^x$",
]  # fmt: skip
VERSIONS = ["1", "v1.2", "1.2.3", "01.2.3", "1.2.3-01", "1.2.3-rc.1+b", "1.2.3.4", "", "x", "18446744073709551616"]
OPS = ["", "In", "NotIn", "InRegexp", "Exists", "DoesNotExist", "Gt", "Ge", "Lt", "Le", "GtLt", "GeLe",
       "IsTrue", "IsFalse", "Foo"]  # fmt: skip
FEATURES = ["cpu.cpuid", "cpu.model", "pci.device", "kernel.version", "f.flag", "f.attr", "f.inst", "", "CPU.Model"]
ELEMENTS = ["AVX", "vendor_id", "vendor", "class", "major", "family", "x", ""]

scalar = st.sampled_from(SCALARS)
value_item = st.one_of(
    st.sampled_from(REGEXES).map(json.dumps),
    st.sampled_from(VERSIONS).map(json.dumps),
    st.integers(-(1 << 70), 1 << 70).map(str),
    scalar,
)


@st.composite
def yaml_spec(draw: st.DrawFn) -> str:
    """Spec-shaped YAML in which any position may hold an odd scalar, a wrong type, an alias or a merge."""

    def maybe(good: str) -> str:
        return draw(st.sampled_from([good, good, good, draw(scalar)]))

    lines = []
    if draw(st.booleans()):
        lines.append(f"base: &a {draw(scalar)}")
    lines.append(f"version: {maybe('v1alpha1')}")
    lines.append("compatibilities:")
    for _ in range(draw(st.integers(0, 2))):
        lines.append(f"- weight: {maybe('1')}")
        lines.append(f"  tag: {maybe('t')}")
        if draw(st.booleans()):
            lines.append(f"  {draw(st.sampled_from(['rules', 'Rules', 'rulez']))}: {draw(scalar)}")
            continue
        lines.append("  rules:")
        for r in range(draw(st.integers(0, 2))):
            lines.append(f"  - name: {maybe(f'r{r}')}")
            if draw(st.booleans()):
                lines.append(f"    vars: {{k: {maybe('v')}}}")
            lines.append(f"    {draw(st.sampled_from(['matchFeatures', 'matchAny']))}:")
            for _ in range(draw(st.integers(0, 2))):
                lines.append(f"    - feature: {maybe(draw(st.sampled_from(FEATURES)))}")
                kind = draw(st.sampled_from(["matchExpressions", "matchName", "matchFeatures", "odd"]))
                if kind == "odd":
                    lines.append(f"      matchExpressions: {draw(scalar)}")
                    continue
                op = draw(st.sampled_from(OPS))
                values = ", ".join(draw(st.lists(value_item, max_size=3)))
                typ = draw(st.sampled_from(["", "", ", type: version", ", type: semver", f", type: {draw(scalar)}"]))
                expr = f"{{op: {maybe(op)}, value: [{values}]{typ}}}"
                if draw(st.booleans()):
                    expr = f"{{op: {maybe(op)}, value: {draw(scalar)}}}"
                if kind == "matchName":
                    lines.append(f"      matchName: {expr}")
                else:
                    element = draw(st.sampled_from(ELEMENTS)) or '""'
                    lines.append(f"      matchExpressions: {{{element}: {expr}}}")
    if draw(st.booleans()):
        lines.append(f"extra: {{<<: *a, k: {draw(scalar)}}}")
    return "\n".join(lines) + "\n"


raw_text = st.lists(
    st.sampled_from([*list("abvx01.9-:[]{},&*!|>'\"#%@`?~ \n\t\\"), "!!int", "é", "\ufeff", "\x00", "<<", "e+39"]),
    max_size=80,
).map("".join)
features = st.fixed_dictionaries(
    {
        "flags": st.lists(st.sampled_from(ELEMENTS), max_size=3),
        "attrs": st.dictionaries(st.sampled_from(ELEMENTS), st.sampled_from([*VERSIONS, "GenuineIntel", "true"])),
        "insts": st.lists(
            st.dictionaries(st.sampled_from(ELEMENTS), st.sampled_from([*VERSIONS, "8086", "0300"]), max_size=3),
            max_size=3,
        ),
    }
)


def build_features(fd: dict[str, Any]) -> Features:
    f = Features()
    for name in ("cpu.cpuid", "f.flag"):
        f.add_flags(name, fd["flags"])
    for name in ("cpu.model", "kernel.version", "f.attr"):
        f.add_attributes(name, fd["attrs"])
    for name in ("pci.device", "f.inst"):
        f.set_instances(name, fd["insts"])
    return f


def check(text: str, fd: dict[str, Any], compat: bool) -> str:
    """Run the whole path on one input; return "spec-error" or "verdict". Any other exception escapes."""
    try:
        spec = parse_spec(text, nfd_compat=compat)
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems), exc.problems
        status = spec_error_status(exc.problems, "inline spec")
        assert len(status.details) < 4096
        assert len(status.trailing_metadata[0][1]) <= DEFAULT_STATUS_DETAILS_BYTES
        return "spec-error"
    verdict = evaluate(spec, build_features(fd), tags=["t"] if len(text) % 2 else [])
    report = wire.to_message(verdict, validation_pb2.ValidationReport)
    report.SerializeToString()
    if verdict.nfd_json:
        json.loads(verdict.nfd_json)
    return "verdict"


regex_text = st.lists(
    st.sampled_from(
        [
            *"ab.|*+?()[]{}^$-,:\\0123789xzpPQECdDsSwWAbBnrtv_<>=!'iUms",
            *["(?", "(?P<", "(?<", "\\p{", "[:", ":]", "\\x{", "{2}", "{1,3}", "{1000}", "\\Q", "\\E"],
            *["\u00e9", "\U0001f600", "Greek}", "L}", "Letter}", "^Any}", "alpha:]", "(?i)", "(?-i:", "\\C"],
        ]
    ),
    max_size=24,
).map("".join)  # fmt: skip


def check_regex(pattern: str) -> bool:
    """Go accepts and RE2 compiles the translation, or Go refuses with its error text."""
    import re2

    from nodecompat.engine.goregexp import GoSyntaxError, translate

    try:
        t = translate(pattern)
    except GoSyntaxError as exc:
        assert str(exc).startswith("error parsing regexp: ")
        return False
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = 256 << 20
    re2._Regexp(t, opts)  # raises if the translation is not valid RE2
    return True


json_text = st.text(
    alphabet=st.sampled_from(["a", "x", "1", ".", " ", "\ud800", "\udfff", "\x00", "\u00e9", "\\"]), max_size=6
)
json_scalar = st.one_of(
    json_text, st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=False), st.booleans(), st.none()
)


@st.composite
def json_spec(draw: st.DrawFn) -> str:
    """Spec-shaped JSON with odd strings (lone surrogate escapes, NUL) and odd types anywhere."""

    def s(good: str) -> Any:
        return draw(st.sampled_from([good, good, draw(json_scalar)]))

    expr = {"op": s("In"), "value": draw(st.lists(json_scalar, max_size=2)), "type": s("")}
    term = {"feature": s("f.attr"), "matchExpressions": {draw(json_text): expr}}
    if draw(st.booleans()):
        term["matchName"] = {"op": s("InRegexp"), "value": [draw(json_text)]}
    rule = {"name": s("r"), "matchFeatures": [term], "vars": {draw(json_text): draw(json_scalar)}}
    cset = {"tag": s("t"), "description": draw(json_text), "rules": [rule]}
    spec = {"version": s("v1alpha1"), "compatibilities": [cset]}
    if draw(st.booleans()):
        spec[draw(json_text)] = draw(json_scalar)
    return json.dumps(spec)
