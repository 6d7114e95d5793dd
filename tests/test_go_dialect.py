"""Go's regexp dialect (issue 15): patterns are accepted exactly when Go's regexp.Compile accepts them.

Vectors from Go's own tests (src/regexp/syntax/parse_test.go: parseTests, invalidRegexps, onlyPOSIX)
plus the differences from RE2's C++ library that matter here: `\\C`, Go 1.25+'s loose Unicode names.
NFD compiles InRegexp values with regexp.Compile (pkg/apis/nfd/nodefeaturerule/expression.go,
compileRegexp); the field case ../shared/field-cases/21-go-regexp-dialect is checked with NFD's result.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import re2

from nodecompat.engine.expressions import ExpressionError, MatchExpression
from nodecompat.engine.goregexp import GoSyntaxError, translate
from nodecompat.engine.spec import SpecError, parse_spec

GO_VALID = [
    r"a", r"a.", r"a|^", r"a|b", r"(a)", r"a{2,}?", r"x{1001", r"x{9876543210", r"x{2,1", r"x{1,9876543210",
    "", "|", "|x|", r"\|", "{", "}", r"[ace]", r"\-", r"\_", r"[[:lower:]]", r"[[:^lower:]]", r"(?i)\W",
    r"\p{Braille}", r"\P{^Braille}", r"\pZ", r"\p{Uppercase_Letter}", r"\p{upper case-let ter}",
    r"\p{__upper case-let ter}", r"\p{Canadian_Aboriginal}", r"\p{Any}", r"\p{^Any}", r"(?i)\p{ascii}",
    r"\p{Assigned}", r"\p{^Assigned}", r"[\012-\234]\141", r"[\x{41}-\x7a]\x61", r"a{,2}",
    "[\u03b1-\u03b5\u263a]", r"a*{",
    r"\Q+|*?{[\E", r"\Q+\E+", r"\Q\\E", r"(?m)\z", r"(?P<name>a)", r"(?<name>a)", r"[\s\S]a",
    r"((((((((((x{2}){2}){2}){2}){2}){2}){2}){2}){2}))", r"(?:[a-z]{4}){0,250}", "(" * 999 + ")" * 999,
    "(?:" * 999 + ")*" * 999, "(" + "|" * 12345 + ")", r"[a-b-c]", r"(?)", r"\p{Cn}", r"[\P{LC}x]",
    r"\pl", r"(?P<x>a)(?P<x>b)", r"[\d-z]",
    "(" * 999 + "ab" + ")" * 999, "(" * 998 + "(a|b)" + ")" * 998, "(" * 999 + "(?:ab)(?:cd)" + ")" * 999,
]  # fmt: skip
GO_INVALID = [
    r"(", r")", r"(a", r"a)", r"(a|b|", r"a|b|)", r"[a-z", r"([a-z)", r"x{1001}", r"x{9876543210}", r"x{2,1}",
    r"(?P<name>a", r"(?P<name", r"(?P<x y>a)", r"(?P<>a)", r"(?<name>", r"(?<x y>a)", r"[a-Z]", r"(?i)[a-Z]",
    r"\Q\E*", r"a{100000}", r"((((((((((x{2}){2}){2}){2}){2}){2}){2}){2}){2}){2})", r"(?:[a-z]{4}){0,251}",
    "(" * 1000 + ")" * 1000, "(?:" * 1000 + ")*" * 1000, "a++", "a**", "a?*", "a{1}*", ".{1}{2}.{3}",
    r"^Genuine\C", r"\8", r"\1", r"\Z", r"\p{Garay}", r"\p{Foo", r"[[:foo:]]", r"(?P=x)", r"(?-)", r"(?x)",
    r"\x{110000}", "\\", r"[\b]", r"(?<=a)", r"*", r"(*)", r"|*",
    "(" * 999 + "(a|b)" + ")" * 999, "(" * 1000 + "ab" + ")" * 1000, r"(?:(?:a{2}){2}){300}",
]  # fmt: skip

_OPTS = re2.Options()
_OPTS.log_errors = False
_OPTS.max_mem = 64 << 20


@pytest.mark.parametrize("pattern", GO_VALID, ids=lambda p: repr(p[:30]))
def test_go_accepts_and_re2_compiles_the_translation(pattern: str) -> None:
    re2.compile(translate(pattern), options=_OPTS)


@pytest.mark.parametrize("pattern", GO_INVALID, ids=lambda p: repr(p[:30]))
def test_go_refuses(pattern: str) -> None:
    with pytest.raises(GoSyntaxError, match=r"^error parsing regexp: "):
        translate(pattern)


def test_go_error_text() -> None:
    with pytest.raises(GoSyntaxError) as exc:
        translate(r"^Genuine\C")
    assert str(exc.value) == r"error parsing regexp: invalid escape sequence: `\C`"
    with pytest.raises(GoSyntaxError) as exc:
        translate(r"(?:[a-z]{4}){0,251}")
    assert str(exc.value) == "error parsing regexp: invalid repeat count: `{0,251}`"


@pytest.mark.parametrize(
    ("pattern", "text", "want"),
    [
        (r"^a$", "a\n", False),  # Go's $ without (?m) is end of text
        (r"(?m)^a$", "b\na\n", True),
        (r"[^a]", "\n", True),  # Perl flags: classes match newline
        (r".", "\n", False),
        (r"(?s).", "\n", True),
        (r"(?i)k", "\u212a", True),  # Kelvin sign folds to k
        (r"\p{greek}", "\u03b1", True),  # Go 1.25+: loose names RE2 does not know
        (r"\p{Letter}", "x", True),
        (r"\P{Any}", "x", False),
        (r"\p{Assigned}", "\u0378", False),
        (r"\p{Cn}", "\u0378", True),
        (r"[\P{LC}]", "a", False),
        (r"[\P{LC}]", "1", True),
        (r"\Qa.b\E", "axb", False),
        (r"(?U)a+?", "aaa", True),
        (r"\x{1F600}", "😀", True),
    ],
)
def test_translation_matches_what_go_matches(pattern: str, text: str, want: bool) -> None:
    assert (re2.compile(translate(pattern), options=_OPTS).search(text) is not None) is want


def test_nfd_message_in_compat_mode_and_located_error_in_strict_mode() -> None:
    e = MatchExpression("InRegexp", [r"^Genuine\C"])
    with pytest.raises(ExpressionError) as exc:
        e.compiled().evaluate(True, "GenuineIntel")
    # expression.go, case MatchInRegexp (typo included)
    assert str(exc.value) == (
        "invalid expressiom, 'value' field must only contain valid regexps for Op \"InRegexp\" (have [^Genuine\\C])"
    )
    assert e.compiled().evaluate(False, None) is False  # lazily, as NFD: an absent element does not match
    text = (
        "compatibilities:\n- rules:\n  - name: n\n    matchFeatures:\n    - feature: cpu.cpuid\n"
        "      matchName: {op: InRegexp, value: ['\\C']}\n"
    )
    with pytest.raises(SpecError) as serr:
        parse_spec(text)
    assert serr.value.problems[0].startswith("compatibilities[0].rules[0].matchFeatures[0].matchName: value[0]")
    assert any(w.startswith("tolerated: ") and "\\C" in w for w in parse_spec(text, nfd_compat=True).warnings)


_SHARED = Path(__file__).resolve().parents[2] / "shared" / "field-cases" / "21-go-regexp-dialect"
# The shared copy when it is beside this clone, else the copy kept in the tests (so CI runs it).
_KEPT = Path(__file__).parent / "fixtures" / "field-case-21-go-regexp-dialect"  # not in field-cases/: host-tree cases
FIELD_CASE = _SHARED if _SHARED.is_dir() else _KEPT


@pytest.mark.skipif(not FIELD_CASE.is_dir(), reason="field case 21 is not beside this clone")
def test_field_case_21_go_regexp_dialect() -> None:
    """NFD master 76e6cc8c stops with the InRegexp error (no JSON); strict mode refuses the spec up front."""
    base = [sys.executable, "-m", "nodecompat.clients.cli", "validate", "--spec", str(FIELD_CASE / "spec.yaml"),
            "--features", str(FIELD_CASE / "features.json")]  # fmt: skip
    # expected.txt: "the same happens ... with -o json / table": NFD stops whatever the output format.
    for output in ("nfd-json", "json", "table"):
        compat = subprocess.run([*base, "--nfd-compat", "-o", output], capture_output=True, text=True, timeout=120)
        assert compat.returncode == 2, (output, compat)
        assert compat.stdout == "", output
        assert "'value' field must only contain valid regexps" in compat.stderr, output
    strict = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2, strict
    assert "matchExpressions.vendor_id: value[0]" in strict.stderr
    assert "invalid escape sequence: `\\C`" in strict.stderr


# -- type: version, as Masterminds/semver v3.5.0 NewVersion (NFD go.mod) with CoerceNewVersion ----------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1", (1, 0, 0)),
        ("v1.2", (1, 2, 0)),
        ("1.2.3", (1, 2, 3)),
        ("01.02.03", (1, 2, 3)),  # coerced: leading zeros in the numbers are accepted
        ("5.15.0-91-generic", (5, 15, 0)),  # pre-release dropped by NFD's extractVersion
        ("1.2.3-rc.1+build.01", (1, 2, 3)),
        ("18446744073709551615", ((1 << 64) - 1, 0, 0)),
        ("1.2.3-0a", (1, 2, 3)),
    ],
)
def test_versions_semver_accepts(text: str, want: tuple[int, int, int]) -> None:
    from nodecompat.engine.expressions import parse_version

    assert parse_version(text) == want


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("1.2.3.4", "invalid semantic version"),
        ("", "invalid semantic version"),
        (" 1.2.3", "invalid semantic version"),
        ("V1.2.3", "invalid semantic version"),
        ("1.2.3-", "invalid semantic version"),
        ("1.2.3-01", "version segment starts with 0"),
        ("1.2.3-a..b", "invalid semantic version"),
        ("1.2.3+", "invalid semantic version"),
        ("1.2.3\n", "invalid semantic version"),
        ("18446744073709551616", 'error parsing version segment: strconv.ParseUint: parsing "18446744073709551616"'),
        ("1." + "9" * 5000, "error parsing version segment"),
    ],
)
def test_versions_semver_refuses(text: str, error: str) -> None:
    from nodecompat.engine.expressions import parse_version

    with pytest.raises(ValueError, match="^" + re.escape(error)):
        parse_version(text)


def test_version_errors_are_nfds_in_compat_mode() -> None:
    e = MatchExpression("Gt", ["1.2.3-01"], "version")
    with pytest.raises(ExpressionError) as exc:
        e.compiled().evaluate(True, "5.15.0")
    assert str(exc.value) == 'not a version "1.2.3-01" in &{Gt [1.2.3-01] version}'  # expression.go
    with pytest.raises(ExpressionError) as exc:
        MatchExpression("Gt", ["1.2.3"], "version").compiled().evaluate(True, "x")
    assert str(exc.value) == 'not a version "x"'


@pytest.mark.parametrize(
    ("op", "values", "typ", "node", "message"),
    [  # the fmt.Errorf texts of expression.go, evaluateMatchExpression
        ("Gt", ["1", "2"], "", "5", "invalid expression, 'value' field must contain exactly one element "
         'for Op "Gt" (have [1 2])'),
        ("Gt", ["x"], "", "5", 'not a number "x" in &{Gt [x] }'),
        ("Gt", ["1"], "", "x", 'not a number "x"'),
        ("GtLt", ["5", "1"], "", "3", 'invalid expression, value[0] must be less than Value[1] for Op "GtLt" '
         "(have [5 1])"),
        ("Gt", ["1"], "semver", "5", "invalid expression, 'type' field only accepts \"version\" value "
         'for Op "Gt" (have "semver")'),
        ("In", [], "", "5", "invalid expression, 'value' field must be non-empty for Op \"In\""),
        ("Exists", ["a"], "", "5", "invalid expression, 'value' field must be empty for Op \"Exists\" (have [a])"),
        ("Foo", [], "", "5", 'invalid Op "Foo"'),
    ],
)  # fmt: skip
def test_nfd_error_texts(op: str, values: list[str], typ: str, node: str, message: str) -> None:
    with pytest.raises(ExpressionError) as exc:
        MatchExpression(op, values, typ).compiled().evaluate(True, node)
    assert str(exc.value) == message
