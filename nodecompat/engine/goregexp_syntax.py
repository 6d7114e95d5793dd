"""Go's regexp/syntax limits and error texts, as nodecompat.engine.goregexp reports them.

Holds MAX_REPEAT and MAX_HEIGHT (Go's maxRepeat and maxHeight), Go's ErrorCode texts and GoSyntaxError (Go's
*syntax.Error message shape). Follows Go's src/regexp/syntax/parse.go (Go 1.26, the toolchain NFD's go.mod names);
the dialect translation as a whole is described in nodecompat.engine.goregexp.
"""

from __future__ import annotations

MAX_REPEAT = 1000  # Go's maxRepeat: any single count and the product of nested counts
MAX_HEIGHT = 1000  # Go's maxHeight: depth of the parse tree

# Go's ErrorCode texts (regexp/syntax).
ERR_INVALID_CHAR_CLASS = "invalid character class"
ERR_INVALID_CHAR_RANGE = "invalid character class range"
ERR_INVALID_ESCAPE = "invalid escape sequence"
ERR_INVALID_NAMED_CAPTURE = "invalid named capture"
ERR_INVALID_PERL_OP = "invalid or unsupported Perl syntax"
ERR_INVALID_REPEAT_OP = "invalid nested repetition operator"
ERR_INVALID_REPEAT_SIZE = "invalid repeat count"
ERR_INVALID_UTF8 = "invalid UTF-8"
ERR_MISSING_BRACKET = "missing closing ]"
ERR_MISSING_PAREN = "missing closing )"
ERR_MISSING_REPEAT_ARGUMENT = "missing argument to repetition operator"
ERR_TRAILING_BACKSLASH = "trailing backslash at end of expression"
ERR_UNEXPECTED_PAREN = "unexpected )"
ERR_NESTING_DEPTH = "expression nests too deeply"


class GoSyntaxError(ValueError):
    """Go's *syntax.Error: `error parsing regexp: CODE: `EXPR``."""

    def __init__(self, code: str, expr: str) -> None:
        self.code = code
        self.expr = expr
        super().__init__(f"error parsing regexp: {code}: `{expr}`")
