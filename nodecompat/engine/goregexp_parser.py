"""Go's regexp parser operators: concatenation, alternation, repetition, groups and Perl flags, with Go's checks.

Parser extends AtomReader (nodecompat.engine.goregexp_atoms) with the operator half of Go's parser: it builds
the RE2 text of the whole pattern on the node stack while enforcing Go's limits as Go does (repeat counts over
1000, also as a product of nested repeats; nesting deeper than 1000) and refusing what Go refuses with Go's error
text; captures become non-capturing (only match/no-match matters). Follows Go's src/regexp/syntax/parse.go
(parse, concat, alternate, repeat, parseRepeat, parseInt, parsePerlFlags; Go 1.26, the toolchain NFD's go.mod
names); the dialect translation as a whole is described in nodecompat.engine.goregexp.
"""

from __future__ import annotations

from typing import Any

from nodecompat.engine.goregexp_atoms import (
    DOTNL,
    FOLD,
    NONGREEDY,
    ONELINE,
    PSEUDO_BAR,
    PSEUDO_LPAREN,
    AtomReader,
    lit_text,
)
from nodecompat.engine.goregexp_syntax import (
    ERR_INVALID_NAMED_CAPTURE,
    ERR_INVALID_PERL_OP,
    ERR_INVALID_REPEAT_OP,
    ERR_INVALID_REPEAT_SIZE,
    ERR_MISSING_PAREN,
    ERR_MISSING_REPEAT_ARGUMENT,
    ERR_NESTING_DEPTH,
    ERR_UNEXPECTED_PAREN,
    MAX_HEIGHT,
    MAX_REPEAT,
    GoSyntaxError,
)


class Parser(AtomReader):
    """Go's parser over one pattern: Parser(pattern).parse() is the RE2 text, or GoSyntaxError."""

    def concat(self) -> None:
        i = len(self.stack)
        while i > 0 and self.stack[i - 1][0] not in (PSEUDO_LPAREN, PSEUDO_BAR):
            i -= 1
        subs = self.stack[i:]
        del self.stack[i:]
        if not subs:
            self.push("empty", "(?:)")
        elif len(subs) == 1:
            self.stack.append(subs[0])
        elif all(s[0] in ("lit", "str") and s[3] == subs[0][3] for s in subs):  # one string node in Go
            self.push("str", [s[1] for s in subs], 1, subs[0][3])
        else:
            self.push("cat", [s[1] for s in subs], 1 + max(s[2] for s in subs), max(_product(s) for s in subs))
        self._check_height(self.stack[-1])

    def alternate(self) -> None:
        i = len(self.stack)
        while i > 0 and self.stack[i - 1][0] != PSEUDO_LPAREN:
            i -= 1
        subs = [s for s in self.stack[i:] if s[0] != PSEUDO_BAR]
        del self.stack[i:]
        if len(subs) == 1:
            self.stack.append(subs[0])
            return
        text: list[Any] = ["(?:"]
        for k, sub in enumerate(subs):
            if k:
                text.append("|")
            text.append(sub[1])
        text.append(")")
        if all(s[0] in ("lit", "cc", "dot") for s in subs):  # Go merges them into one character class
            self.push("cc", text, 1, 1)
        else:
            self.push("alt", text, 1 + max(s[2] for s in subs), max(_product(s) for s in subs))
        self._check_height(self.stack[-1])

    def _check_height(self, node: list[Any]) -> None:
        if node[2] > MAX_HEIGHT:
            raise GoSyntaxError(ERR_NESTING_DEPTH, self.s)

    # -- repetition -----------------------------------------------------------------------------
    def repeat(self, op: str, lo: int, hi: int, start: int, after: int, last_repeat: int) -> int:
        """Apply a repeat whose text is s[start:after]; returns the position after it (and a lazy '?')."""
        nongreedy = bool(self.flags & NONGREEDY)
        if after < self.n and self.s[after] == "?":
            after += 1
            nongreedy = not nongreedy
        if last_repeat >= 0:
            raise self.err(ERR_INVALID_REPEAT_OP, last_repeat, after)
        if not self.stack or self.stack[-1][0] in (PSEUDO_LPAREN, PSEUDO_BAR):
            raise self.err(ERR_MISSING_REPEAT_ARGUMENT, start, after)
        sub = self.stack.pop()
        lazy = "?" if nongreedy else ""
        product = _product(sub)
        if op == "{":
            count = lo if hi == -1 else hi
            if hi == 0:
                product = 1  # x{0}: Go's check does not look inside
            elif count > 0:
                product = count * _product(sub)
            if (lo >= 2 or hi >= 2) and product > MAX_REPEAT:
                raise self.err(ERR_INVALID_REPEAT_SIZE, start, after)
            suffix = f"{{{lo}}}" if lo == hi else (f"{{{lo},}}" if hi == -1 else f"{{{lo},{hi}}}")
        else:
            suffix = op
        self.push("rep", ["(?:", sub[1], ")", suffix, lazy], sub[2] + 1, product)
        self._check_height(self.stack[-1])
        return after

    # -- the pattern ----------------------------------------------------------------------------
    def parse(self) -> str:
        s = self.s
        i = 0
        last_repeat = -1
        while i < self.n:
            rep = -1
            c = s[i]
            if c == "(":
                if i + 1 < self.n and s[i + 1] == "?":
                    i = self.perl_flags(i)
                else:
                    self.push_paren("cap")
                    i += 1
            elif c == "|":
                self.concat()
                self.push(PSEUDO_BAR, None)
                i += 1
            elif c == ")":
                self.right_paren()
                i += 1
            elif c == "^":
                self.push("op", r"\A" if self.flags & ONELINE else "(?m:^)")
                i += 1
            elif c == "$":
                self.push("op", r"\z" if self.flags & ONELINE else "(?m:$)")
                i += 1
            elif c == ".":
                self.push("dot", "(?s:.)" if self.flags & DOTNL else r"[^\n]")
                i += 1
            elif c == "[":
                i = self.parse_class(i)
            elif c in "*+?":
                after = self.repeat(c, 0, 0, i, i + 1, last_repeat)
                rep = i
                i = after
            elif c == "{":
                parsed = _parse_repeat(s, i)
                if parsed is None:
                    self.push("lit", lit_text("{", False), product=0)
                    i += 1
                else:
                    lo, hi, after = parsed
                    if lo < 0 or lo > MAX_REPEAT or hi > MAX_REPEAT or (hi >= 0 and lo > hi):
                        raise self.err(ERR_INVALID_REPEAT_SIZE, i, after)
                    after = self.repeat("{", lo, hi, i, after, last_repeat)
                    rep = i
                    i = after
            elif c == "\\":
                i = self.backslash(i)
            else:
                self.literal(c)
                i += 1
            last_repeat = rep
        self.concat()
        self.alternate()
        if len(self.stack) != 1 or self.stack[0][0] == PSEUDO_LPAREN:
            raise GoSyntaxError(ERR_MISSING_PAREN, s)
        return _flatten(self.stack[0][1])

    def right_paren(self) -> None:
        self.concat()
        self.alternate()
        if len(self.stack) < 2 or self.stack[-2][0] != PSEUDO_LPAREN:
            raise GoSyntaxError(ERR_UNEXPECTED_PAREN, self.s)
        sub = self.stack.pop()
        lp = self.stack.pop()
        self.flags = lp[4]
        capture = lp[1] == "cap"
        if capture:
            self.push("grp", ["(?:", sub[1], ")"], sub[2] + 1, _product(sub))
        else:  # Go keeps no node for (?:...): what is inside stays what it was (a literal still merges)
            self.push(sub[0], ["(?:", sub[1], ")"], sub[2], sub[3])
        self._check_height(self.stack[-1])

    def perl_flags(self, i: int) -> int:
        s = self.s
        starts_p = self.n - i > 4 and s[i + 2] == "P" and s[i + 3] == "<"
        starts_name = self.n - i > 3 and s[i + 2] == "<"
        if starts_p or starts_name:
            begin = i + (4 if starts_p else 3)
            end = s.find(">", i)
            if end < 0:
                raise self.err(ERR_INVALID_NAMED_CAPTURE, i)
            name = s[begin:end]
            if not name or any(not (ch == "_" or (ch.isascii() and ch.isalnum())) for ch in name):
                raise self.err(ERR_INVALID_NAMED_CAPTURE, i, end + 1)
            self.push_paren("cap")
            return end + 1
        j = i + 2
        flags = self.flags
        sign = 1
        saw = False
        while j < self.n:
            c = s[j]
            j += 1
            if c == "i":
                flags = flags | FOLD if sign > 0 else flags & ~FOLD
                saw = True
            elif c == "m":  # m clears OneLine
                flags = flags & ~ONELINE if sign > 0 else flags | ONELINE
                saw = True
            elif c == "s":
                flags = flags | DOTNL if sign > 0 else flags & ~DOTNL
                saw = True
            elif c == "U":
                flags = flags | NONGREEDY if sign > 0 else flags & ~NONGREEDY
                saw = True
            elif c == "-":
                if sign < 0:
                    break
                sign = -1
                saw = False
            elif c in ":)":
                if sign < 0 and not saw:
                    break
                if c == ":":
                    self.push_paren("grp")
                self.flags = flags
                return j
            else:
                break
        raise self.err(ERR_INVALID_PERL_OP, i, j)


def _product(node: list[Any]) -> int:
    """The largest product of nested repeat counts in a node (a literal's field holds its fold flag)."""
    return 1 if node[0] in ("lit", "str") else int(node[3])


def _parse_int(s: str, i: int) -> tuple[int, int] | None:
    """Go's parseInt at s[i]: (value, end); no leading zero unless alone; -1 once the value reaches 1e8."""
    n = len(s)
    if i >= n or not "0" <= s[i] <= "9":
        return None
    if i + 1 < n and s[i] == "0" and "0" <= s[i + 1] <= "9":
        return None
    j = i
    while j < n and "0" <= s[j] <= "9":
        j += 1
    v = 0
    for ch in s[i:j]:
        if v >= 100_000_000:
            v = -1
            break
        v = v * 10 + ord(ch) - 48
    return v, j


def _parse_repeat(s: str, i: int) -> tuple[int, int, int] | None:
    """Go's parseRepeat at s[i] == '{': (min, max, end) for {n}, {n,} (max -1), {n,m}; None if not one."""
    n = len(s)
    got = _parse_int(s, i + 1)
    if got is None:
        return None
    lo, j = got
    if j >= n:
        return None
    if s[j] != ",":
        hi = lo
    else:
        j += 1
        if j >= n:
            return None
        if s[j] == "}":
            hi = -1
        else:
            got = _parse_int(s, j)
            if got is None:
                return None
            hi, j = got
            if hi < 0:
                lo = -1
    if j >= n or s[j] != "}":
        return None
    return lo, hi, j + 1


def _flatten(text: Any) -> str:
    out: list[str] = []
    stack = [text]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            out.append(x)
        else:
            stack.extend(reversed(x))
    return "".join(out)
