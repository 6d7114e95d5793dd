"""Limits that keep hostile specs cheap: size, nesting depth, and how much detail we report.

One place for the numbers so the parser, the linter and the tests agree on them.
"""

from __future__ import annotations

# Specs larger than this are refused before any parsing (callers may lower or raise it).
MAX_SPEC_BYTES = 1 << 20
# Deepest YAML/JSON nesting accepted. A real spec nests about 8 levels; 64 leaves room and stops
# `[[[[...` or `{a:{a:...` long before Python's recursion limit.
MAX_DEPTH = 64
# At most this many element names are copied into an ExpressionVerdict's `actual` for matchName.
MAX_ACTUAL_NAMES = 64
