"""Reading the atoms of a Go regexp: literals, escapes, \\Q...\\E, \\p{...} names and [...] character classes.

Holds the parse-tree node conventions and Perl flag bits shared with the operator parser
(nodecompat.engine.goregexp_parser), and AtomReader: the parser's state (pattern, position-based reading, node
stack, flags) with every method that reads one atom and pushes its node, each atom spelled as RE2 text with the
same meaning (literals as `\\x{...}`, Go-only classes spelled out, flags made local). Follows Go's
src/regexp/syntax/parse.go (parseEscape, parseClass, parseUnicodeClass, parsePerlClassEscape; Go 1.26, the
toolchain NFD's go.mod names); the dialect translation as a whole is described in nodecompat.engine.goregexp.
"""

from __future__ import annotations

from typing import Any

from nodecompat.engine.goregexp_syntax import (
    ERR_INVALID_CHAR_RANGE,
    ERR_INVALID_ESCAPE,
    ERR_MISSING_BRACKET,
    ERR_TRAILING_BACKSLASH,
    GoSyntaxError,
)
from nodecompat.engine.goregexp_unicode import unicode_items

_PERL_CLASSES = {"d", "D", "s", "S", "w", "W"}
_POSIX = {"alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
          "upper", "word", "xdigit"}  # fmt: skip

# -- the parse tree (just what the checks and the RE2 text need) ---------------------------------------
# A node is [kind, text, height, product]: text is a nested list of strings (flattened at the end, so
# deep nesting costs no re-copying); product is the largest product of nested repeat counts below it.
PSEUDO_LPAREN = "("
PSEUDO_BAR = "|"
FOLD = 1
DOTNL = 2
ONELINE = 4
NONGREEDY = 8


def lit_text(c: str, fold: bool) -> Any:
    o = ord(c)
    t = c if ("0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z" or c == "_") else rf"\x{{{o:X}}}"
    return ["(?i:", t, ")"] if fold else t


def _class_char_text(o: int) -> str:
    return rf"\x{{{o:X}}}"


def _unhex(c: str) -> int:
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c <= "f":
        return ord(c) - 87
    if "A" <= c <= "F":
        return ord(c) - 55
    return -1


class AtomReader:
    """Go's parser state, read by position in the pattern (no re-slicing: cost stays linear in its length),
    and the reading of single atoms; the operators (concatenation, alternation, repeats, groups) are
    nodecompat.engine.goregexp_parser's Parser."""

    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.n = len(pattern)
        self.flags = ONELINE  # Perl flags: OneLine on, the rest off
        self.stack: list[list[Any]] = []

    def err(self, code: str, a: int, b: int | None = None) -> GoSyntaxError:
        return GoSyntaxError(code, self.s[a : self.n if b is None else b])

    # -- stack ---------------------------------------------------------------------------------
    def push(self, kind: str, text: Any, height: int = 1, product: int = 1) -> None:
        self.stack.append([kind, text, height, product])

    def push_paren(self, kind: str) -> None:
        self.stack.append([PSEUDO_LPAREN, kind, 0, 1, self.flags])

    def literal(self, c: str) -> None:
        """A literal rune; its node's product field is unused (1), so it carries the fold flag instead:
        Go merges adjacent literals of the same case folding into one string node (height 1)."""
        fold = bool(self.flags & FOLD)
        self.push("lit", lit_text(c, fold), product=2 if fold else 0)

    def backslash(self, i: int) -> int:
        s = self.s
        if i + 1 < self.n:
            c = s[i + 1]
            if c in "AbBz":
                self.push("op", "\\" + c)
                return i + 2
            if c == "C":
                raise self.err(ERR_INVALID_ESCAPE, i, i + 2)
            if c == "Q":
                end = s.find("\\E", i + 2)
                stop, nxt = (self.n, self.n) if end < 0 else (end, end + 2)
                for ch in s[i + 2 : stop]:
                    self.literal(ch)
                return nxt
            if c in "pP":
                items, j = self.unicode_class(i)
                self.push("cc", self._class_text(items, False))
                return j
            if c in _PERL_CLASSES:
                self.push("cc", self._class_text("\\" + c, False))
                return i + 2
        r, j = self.escape(i)
        self.literal(chr(r))
        return j

    def _class_text(self, items: str, negated: bool) -> Any:
        if not items:  # an empty set (\P{Any}): say it the way RE2 reads
            items, negated = r"\x{0}-\x{10FFFF}", not negated
        body = ["[", "^" if negated else "", items, "]"]
        return ["(?i:", body, ")"] if self.flags & FOLD else body

    def unicode_class(self, i: int) -> tuple[str, int]:
        s = self.s
        negate = s[i + 1] == "P"
        if i + 2 >= self.n or s[i + 2] != "{":
            seq_end = min(i + 3, self.n)
            name = s[i + 2 : seq_end]
            rest = seq_end
        else:
            end = s.find("}", i)
            if end < 0:
                raise self.err(ERR_INVALID_CHAR_RANGE, i)
            seq_end, rest = end + 1, end + 1
            name = s[i + 3 : end]
        if name.startswith("^"):
            negate = not negate
            name = name[1:]
        items = unicode_items(name, negate)
        if items is None:
            raise self.err(ERR_INVALID_CHAR_RANGE, i, seq_end)
        return items, rest

    def escape(self, i: int) -> tuple[int, int]:
        """Go's parseEscape at s[i] == '\\': (rune, position after the escape)."""
        s = self.s
        n = self.n
        j = i + 1
        if j >= n:
            raise GoSyntaxError(ERR_TRAILING_BACKSLASH, "")
        c = s[j]
        j += 1
        if c.isascii() and not c.isalnum():
            return ord(c), j
        if c in "1234567" and not (j < n and "0" <= s[j] <= "7"):
            pass  # a backreference: not supported
        elif c in "01234567":
            r = ord(c) - 48
            for _ in range(2):
                if j >= n or not ("0" <= s[j] <= "7"):
                    break
                r = r * 8 + ord(s[j]) - 48
                j += 1
            return r, j
        elif c == "x" and j < n:
            c = s[j]
            j += 1
            if c == "{":
                r = 0
                digits = 0
                while j < n:
                    c = s[j]
                    j += 1
                    if c == "}":
                        if digits:
                            return r, j
                        break
                    v = _unhex(c)
                    if v < 0:
                        break
                    r = r * 16 + v
                    if r > 0x10FFFF:
                        break
                    digits += 1
            else:
                x = _unhex(c)
                y = -1
                if j < n:
                    y = _unhex(s[j])
                    j += 1
                if x >= 0 and y >= 0:
                    return x * 16 + y, j
        elif c in "afnrtv":
            return {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}[c], j
        raise self.err(ERR_INVALID_ESCAPE, i, j)

    def parse_class(self, start: int) -> int:
        s = self.s
        n = self.n
        i = start + 1
        negated = False
        if i < n and s[i] == "^":
            negated = True
            i += 1
        items: list[str] = []
        first = True
        while i >= n or s[i] != "]" or first:
            first = False
            if n - i > 2 and s[i] == "[" and s[i + 1] == ":":
                k = s.find(":]", i + 2)
                if k >= 0:
                    name = s[i : k + 2]
                    if name[2:-2].removeprefix("^") not in _POSIX:
                        raise GoSyntaxError(ERR_INVALID_CHAR_RANGE, name)
                    items.append(name)
                    i = k + 2
                    continue
            if n - i >= 2 and s[i] == "\\" and s[i + 1] in "pP":
                u, i = self.unicode_class(i)
                items.append(u)
                continue
            if n - i >= 2 and s[i] == "\\" and s[i + 1] in _PERL_CLASSES:
                items.append(s[i : i + 2])
                i += 2
                continue
            rng = i
            lo, i = self.class_char(i, start)
            hi = lo
            if n - i >= 2 and s[i] == "-" and s[i + 1] != "]":
                hi, i = self.class_char(i + 1, start)
                if hi < lo:
                    raise self.err(ERR_INVALID_CHAR_RANGE, rng, i)
            items.append(_class_char_text(lo) if lo == hi else f"{_class_char_text(lo)}-{_class_char_text(hi)}")
        self.push("cc", self._class_text("".join(items), negated))
        return i + 1

    def class_char(self, i: int, class_start: int) -> tuple[int, int]:
        if i >= self.n:
            raise self.err(ERR_MISSING_BRACKET, class_start)
        if self.s[i] == "\\":
            return self.escape(i)
        return ord(self.s[i]), i + 1
