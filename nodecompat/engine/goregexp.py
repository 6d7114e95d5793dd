"""Go's regular-expression dialect (regexp/syntax, as `regexp.Compile` uses it), checked and translated to RE2.

NFD compiles InRegexp values and matchName patterns with Go's `regexp.Compile`; nodecompat matches with
RE2's C++ library (google-re2), which reads a slightly different dialect: RE2 takes `\\C` (any byte),
which Go refuses, and Go 1.25+ takes names RE2 does not know (`\\p{Letter}`, `\\p{greek}`,
`\\p{Assigned}`, `\\p{Cn}`, `\\p{LC}`, `\\p{ASCII}`: Unicode TR18 loose matching of category aliases,
case, spaces, underscores and hyphens). So a pattern is first read here with Go's rules (Perl flags,
as `regexp.Compile` sets them) and either refused with Go's error text or rewritten into an RE2
pattern with the same meaning: literals as `\\x{...}`, names in RE2's spelling, Go-only classes
spelled out, flags made local, captures made non-capturing (only match/no-match matters).

Written from Go's documentation and source (src/regexp/syntax/parse.go and doc.go, Go 1.26, the
toolchain NFD's go.mod names; unicode tables 15.0.0): no Python package parses Go's dialect, and
Python's `re` differs from both. Go's limits are enforced as Go does: repeat counts over 1000
(also as a product of nested repeats), nesting deeper than 1000. Go's size limits (3.3M
instructions, 32M runes) are far above nodecompat's own compiled-regex budget
(nodecompat.engine.limits.MAX_REGEX_MEM), which refuses such patterns first.

Split in modules: nodecompat.engine.goregexp_syntax (limits, error texts, GoSyntaxError),
nodecompat.engine.goregexp_unicode (Go's Unicode class names as RE2 items), nodecompat.engine.goregexp_atoms
(literals, escapes, classes) and nodecompat.engine.goregexp_parser (operators and Go's checks); this module is
the entry point, translate(), and re-exports the public names.
"""

from __future__ import annotations

import re

from nodecompat.engine.goregexp_parser import Parser
from nodecompat.engine.goregexp_syntax import (
    ERR_INVALID_CHAR_CLASS,
    ERR_INVALID_CHAR_RANGE,
    ERR_INVALID_ESCAPE,
    ERR_INVALID_NAMED_CAPTURE,
    ERR_INVALID_PERL_OP,
    ERR_INVALID_REPEAT_OP,
    ERR_INVALID_REPEAT_SIZE,
    ERR_INVALID_UTF8,
    ERR_MISSING_BRACKET,
    ERR_MISSING_PAREN,
    ERR_MISSING_REPEAT_ARGUMENT,
    ERR_NESTING_DEPTH,
    ERR_TRAILING_BACKSLASH,
    ERR_UNEXPECTED_PAREN,
    MAX_HEIGHT,
    MAX_REPEAT,
    GoSyntaxError,
)
from nodecompat.engine.goregexp_unicode import canonical_name

__all__ = [
    "ERR_INVALID_CHAR_CLASS",
    "ERR_INVALID_CHAR_RANGE",
    "ERR_INVALID_ESCAPE",
    "ERR_INVALID_NAMED_CAPTURE",
    "ERR_INVALID_PERL_OP",
    "ERR_INVALID_REPEAT_OP",
    "ERR_INVALID_REPEAT_SIZE",
    "ERR_INVALID_UTF8",
    "ERR_MISSING_BRACKET",
    "ERR_MISSING_PAREN",
    "ERR_MISSING_REPEAT_ARGUMENT",
    "ERR_NESTING_DEPTH",
    "ERR_TRAILING_BACKSLASH",
    "ERR_UNEXPECTED_PAREN",
    "MAX_HEIGHT",
    "MAX_REPEAT",
    "GoSyntaxError",
    "canonical_name",
    "translate",
]

_META = re.compile(r"[\\\[\](){}|*+?.^$\ud800-\udfff]")


def translate(pattern: str) -> str:
    """Check `pattern` as Go's regexp.Compile does; return an RE2 pattern that matches the same strings.

    Raises GoSyntaxError (Go's message) for what Go refuses. Strings reaching us are Unicode text;
    a lone surrogate (possible only through JSON escapes) is what Go's decoders make of it, U+FFFD.
    """
    if not _META.search(pattern):  # no metacharacter: Go and RE2 both read it as the literal text
        return pattern
    if any("\ud800" <= ch <= "\udfff" for ch in pattern):
        pattern = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in pattern)
    return Parser(pattern).parse()
