"""Fuzzed specs (tests/fuzz_specs.py) end in a verdict or located spec errors, never another exception.

CI runs a small budget (FUZZ_EXAMPLES, default 150 per strategy, a few seconds); `make fuzz` runs more.
"""

from __future__ import annotations

import os

from fuzz_specs import check, check_regex, features, json_spec, raw_text, regex_text, yaml_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize="FUZZ_EXAMPLES" not in os.environ,
)


@FUZZ
@given(text=yaml_spec(), fd=features, compat=st.booleans())
def test_fuzzed_yaml_specs(text: str, fd: dict, compat: bool) -> None:
    check(text, fd, compat)


@FUZZ
@given(text=raw_text, fd=features, compat=st.booleans())
def test_fuzzed_raw_text(text: str, fd: dict, compat: bool) -> None:
    check(text, fd, compat)


@FUZZ
@given(head=yaml_spec(), tail=raw_text, fd=features)
def test_fuzzed_spec_with_trailing_garbage(head: str, tail: str, fd: dict) -> None:
    check(head + tail, fd, False)


@FUZZ
@given(pattern=regex_text)
def test_fuzzed_go_regexps_translate_to_valid_re2(pattern: str) -> None:
    check_regex(pattern)


@FUZZ
@given(text=json_spec(), fd=features, compat=st.booleans())
def test_fuzzed_json_specs(text: str, fd: dict, compat: bool) -> None:
    check(text, fd, compat)
