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
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

import re2

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


# -- Unicode class names (Go 1.26: unicode.Categories, unicode.Scripts, unicode.CategoryAliases) ----
_CATEGORIES = [
    "C",
    "Cc",
    "Cf",
    "Co",
    "Cs",
    "L",
    "Ll",
    "Lm",
    "Lo",
    "Lt",
    "Lu",
    "M",
    "Mc",
    "Me",
    "Mn",
    "N",
    "Nd",
    "Nl",
    "No",
    "P",
    "Pc",
    "Pd",
    "Pe",
    "Pf",
    "Pi",
    "Po",
    "Ps",
    "S",
    "Sc",
    "Sk",
    "Sm",
    "So",
    "Z",
    "Zl",
    "Zp",
    "Zs",
]
# Unicode 15.0.0 scripts (Go's tables until Go 1.27 moves to 17.0.0).
_SCRIPTS = [
    "Adlam",
    "Ahom",
    "Anatolian_Hieroglyphs",
    "Arabic",
    "Armenian",
    "Avestan",
    "Balinese",
    "Bamum",
    "Bassa_Vah",
    "Batak",
    "Bengali",
    "Bhaiksuki",
    "Bopomofo",
    "Brahmi",
    "Braille",
    "Buginese",
    "Buhid",
    "Canadian_Aboriginal",
    "Carian",
    "Caucasian_Albanian",
    "Chakma",
    "Cham",
    "Cherokee",
    "Chorasmian",
    "Common",
    "Coptic",
    "Cuneiform",
    "Cypriot",
    "Cypro_Minoan",
    "Cyrillic",
    "Deseret",
    "Devanagari",
    "Dives_Akuru",
    "Dogra",
    "Duployan",
    "Egyptian_Hieroglyphs",
    "Elbasan",
    "Elymaic",
    "Ethiopic",
    "Georgian",
    "Glagolitic",
    "Gothic",
    "Grantha",
    "Greek",
    "Gujarati",
    "Gunjala_Gondi",
    "Gurmukhi",
    "Han",
    "Hangul",
    "Hanifi_Rohingya",
    "Hanunoo",
    "Hatran",
    "Hebrew",
    "Hiragana",
    "Imperial_Aramaic",
    "Inherited",
    "Inscriptional_Pahlavi",
    "Inscriptional_Parthian",
    "Javanese",
    "Kaithi",
    "Kannada",
    "Katakana",
    "Kawi",
    "Kayah_Li",
    "Kharoshthi",
    "Khitan_Small_Script",
    "Khmer",
    "Khojki",
    "Khudawadi",
    "Lao",
    "Latin",
    "Lepcha",
    "Limbu",
    "Linear_A",
    "Linear_B",
    "Lisu",
    "Lycian",
    "Lydian",
    "Mahajani",
    "Makasar",
    "Malayalam",
    "Mandaic",
    "Manichaean",
    "Marchen",
    "Masaram_Gondi",
    "Medefaidrin",
    "Meetei_Mayek",
    "Mende_Kikakui",
    "Meroitic_Cursive",
    "Meroitic_Hieroglyphs",
    "Miao",
    "Modi",
    "Mongolian",
    "Mro",
    "Multani",
    "Myanmar",
    "Nabataean",
    "Nag_Mundari",
    "Nandinagari",
    "New_Tai_Lue",
    "Newa",
    "Nko",
    "Nushu",
    "Nyiakeng_Puachue_Hmong",
    "Ogham",
    "Ol_Chiki",
    "Old_Hungarian",
    "Old_Italic",
    "Old_North_Arabian",
    "Old_Permic",
    "Old_Persian",
    "Old_Sogdian",
    "Old_South_Arabian",
    "Old_Turkic",
    "Old_Uyghur",
    "Oriya",
    "Osage",
    "Osmanya",
    "Pahawh_Hmong",
    "Palmyrene",
    "Pau_Cin_Hau",
    "Phags_Pa",
    "Phoenician",
    "Psalter_Pahlavi",
    "Rejang",
    "Runic",
    "Samaritan",
    "Saurashtra",
    "Sharada",
    "Shavian",
    "Siddham",
    "SignWriting",
    "Sinhala",
    "Sogdian",
    "Sora_Sompeng",
    "Soyombo",
    "Sundanese",
    "Syloti_Nagri",
    "Syriac",
    "Tagalog",
    "Tagbanwa",
    "Tai_Le",
    "Tai_Tham",
    "Tai_Viet",
    "Takri",
    "Tamil",
    "Tangsa",
    "Tangut",
    "Telugu",
    "Thaana",
    "Thai",
    "Tibetan",
    "Tifinagh",
    "Tirhuta",
    "Toto",
    "Ugaritic",
    "Vai",
    "Vithkuqi",
    "Wancho",
    "Warang_Citi",
    "Yezidi",
    "Yi",
    "Zanabazar_Square",
]
# General_Category aliases (Unicode PropertyValueAliases.txt, `gc` lines): alias -> category.
_ALIASES = {
    "Other": "C", "Control": "Cc", "cntrl": "Cc", "Format": "Cf", "Unassigned": "Cn", "Private_Use": "Co",
    "Surrogate": "Cs", "Letter": "L", "Cased_Letter": "LC", "Lowercase_Letter": "Ll", "Modifier_Letter": "Lm",
    "Other_Letter": "Lo", "Titlecase_Letter": "Lt", "Uppercase_Letter": "Lu", "Mark": "M", "Combining_Mark": "M",
    "Spacing_Mark": "Mc", "Enclosing_Mark": "Me", "Nonspacing_Mark": "Mn", "Number": "N", "Decimal_Number": "Nd",
    "digit": "Nd", "Letter_Number": "Nl", "Other_Number": "No", "Punctuation": "P", "punct": "P",
    "Connector_Punctuation": "Pc", "Dash_Punctuation": "Pd", "Close_Punctuation": "Pe",
    "Final_Punctuation": "Pf", "Initial_Punctuation": "Pi", "Other_Punctuation": "Po",
    "Open_Punctuation": "Ps", "Symbol": "S", "Currency_Symbol": "Sc", "Modifier_Symbol": "Sk",
    "Math_Symbol": "Sm", "Other_Symbol": "So", "Separator": "Z", "Line_Separator": "Zl",
    "Paragraph_Separator": "Zp", "Space_Separator": "Zs",
}  # fmt: skip
_ASSIGNED_ITEMS = r"\pL\pM\pN\pP\pS\pZ\p{Cc}\p{Cf}\p{Co}\p{Cs}"  # everything but Cn (RE2's \pC has no Cn)
_LC_ITEMS = r"\p{Lu}\p{Ll}\p{Lt}"


def canonical_name(name: str) -> str:
    """Go's canonicalName: drop ' ', '_' and '-', upper-case the first letter, lower-case the rest."""
    out = []
    first = True
    for c in name:
        if c in " _-":
            continue
        if first:
            out.append(c.upper() if "a" <= c <= "z" else c)
            first = False
        else:
            out.append(c.lower() if "A" <= c <= "Z" else c)
    return "".join(out)


# canonical name -> (positive RE2 class items, negated RE2 class items or None when only ranges can say it)
_UNICODE: dict[str, tuple[str, str | None]] = {}
for _c in _CATEGORIES:
    _UNICODE[canonical_name(_c)] = (rf"\p{{{_c}}}", rf"\P{{{_c}}}")
for _s in _SCRIPTS:
    _UNICODE[canonical_name(_s)] = (rf"\p{{{_s}}}", rf"\P{{{_s}}}")
_UNICODE["Lc"] = (_LC_ITEMS, None)
_UNICODE["Cn"] = ("", _ASSIGNED_ITEMS)  # filled below: Cn positive needs ranges
_UNICODE["Any"] = (r"\x{0}-\x{10FFFF}", "")  # \P{Any}: the empty set
_UNICODE["Assigned"] = (_ASSIGNED_ITEMS, None)
_UNICODE["Ascii"] = (r"\x{0}-\x{7F}", r"\x{80}-\x{10FFFF}")
for _alias, _cat in _ALIASES.items():
    _UNICODE.setdefault(canonical_name(_alias), _UNICODE[canonical_name(_cat)])

_META = re.compile(r"[\\\[\](){}|*+?.^$\ud800-\udfff]")
_RE2_OPTS = re2.Options()
_RE2_OPTS.log_errors = False
_ALL_RUNES: str | None = None
_ALL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def _complement_items(items: str) -> str:
    """RE2 class items for the code points *not* in `[items]` (as ranges), computed with RE2's own tables."""
    global _ALL_RUNES
    with _ALL_LOCK:
        if _ALL_RUNES is None:
            _ALL_RUNES = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    rx = re2._Regexp(f"[^{items}]+", _RE2_OPTS)  # not re2.compile: its module LRU would keep it
    parts = []
    for m in rx.finditer(_ALL_RUNES):
        lo, hi = ord(m.group()[0]), ord(m.group()[-1])
        parts.append(rf"\x{{{lo:X}}}-\x{{{hi:X}}}")
    return "".join(parts)


def _unicode_items(name: str, negate: bool) -> str | None:
    """RE2 class items for Go's \\p{name} (negate: \\P{name}), or None when Go does not know the name."""
    entry = _UNICODE.get(canonical_name(name))
    if entry is None:
        return None
    pos, neg = entry
    if canonical_name(name) == "Cn":
        pos, neg = _complement_items(_ASSIGNED_ITEMS), _ASSIGNED_ITEMS
    if not negate:
        return pos
    return neg if neg is not None else _complement_items(pos)


_PERL_CLASSES = {"d", "D", "s", "S", "w", "W"}
_POSIX = {"alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space",
          "upper", "word", "xdigit"}  # fmt: skip

# -- the parse tree (just what the checks and the RE2 text need) ---------------------------------------
# A node is [kind, text, height, product]: text is a nested list of strings (flattened at the end, so
# deep nesting costs no re-copying); product is the largest product of nested repeat counts below it.
_PSEUDO_LPAREN = "("
_PSEUDO_BAR = "|"
_FOLD = 1
_DOTNL = 2
_ONELINE = 4
_NONGREEDY = 8


def _lit_text(c: str, fold: bool) -> Any:
    o = ord(c)
    t = c if ("0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z" or c == "_") else rf"\x{{{o:X}}}"
    return ["(?i:", t, ")"] if fold else t


def _class_char_text(o: int) -> str:
    return rf"\x{{{o:X}}}"


class _Parser:
    """Go's parser, by position in the pattern (no re-slicing: cost stays linear in its length)."""

    def __init__(self, pattern: str) -> None:
        self.s = pattern
        self.n = len(pattern)
        self.flags = _ONELINE  # Perl flags: OneLine on, the rest off
        self.stack: list[list[Any]] = []

    def err(self, code: str, a: int, b: int | None = None) -> GoSyntaxError:
        return GoSyntaxError(code, self.s[a : self.n if b is None else b])

    # -- stack ---------------------------------------------------------------------------------
    def push(self, kind: str, text: Any, height: int = 1, product: int = 1) -> None:
        self.stack.append([kind, text, height, product])

    def push_paren(self, kind: str) -> None:
        self.stack.append([_PSEUDO_LPAREN, kind, 0, 1, self.flags])

    def literal(self, c: str) -> None:
        """A literal rune; its node's product field is unused (1), so it carries the fold flag instead:
        Go merges adjacent literals of the same case folding into one string node (height 1)."""
        fold = bool(self.flags & _FOLD)
        self.push("lit", _lit_text(c, fold), product=2 if fold else 0)

    def concat(self) -> None:
        i = len(self.stack)
        while i > 0 and self.stack[i - 1][0] not in (_PSEUDO_LPAREN, _PSEUDO_BAR):
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
        while i > 0 and self.stack[i - 1][0] != _PSEUDO_LPAREN:
            i -= 1
        subs = [s for s in self.stack[i:] if s[0] != _PSEUDO_BAR]
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
        nongreedy = bool(self.flags & _NONGREEDY)
        if after < self.n and self.s[after] == "?":
            after += 1
            nongreedy = not nongreedy
        if last_repeat >= 0:
            raise self.err(ERR_INVALID_REPEAT_OP, last_repeat, after)
        if not self.stack or self.stack[-1][0] in (_PSEUDO_LPAREN, _PSEUDO_BAR):
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
                self.push(_PSEUDO_BAR, None)
                i += 1
            elif c == ")":
                self.right_paren()
                i += 1
            elif c == "^":
                self.push("op", r"\A" if self.flags & _ONELINE else "(?m:^)")
                i += 1
            elif c == "$":
                self.push("op", r"\z" if self.flags & _ONELINE else "(?m:$)")
                i += 1
            elif c == ".":
                self.push("dot", "(?s:.)" if self.flags & _DOTNL else r"[^\n]")
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
                    self.push("lit", _lit_text("{", False), product=0)
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
        if len(self.stack) != 1 or self.stack[0][0] == _PSEUDO_LPAREN:
            raise GoSyntaxError(ERR_MISSING_PAREN, s)
        return _flatten(self.stack[0][1])

    def right_paren(self) -> None:
        self.concat()
        self.alternate()
        if len(self.stack) < 2 or self.stack[-2][0] != _PSEUDO_LPAREN:
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
                flags = flags | _FOLD if sign > 0 else flags & ~_FOLD
                saw = True
            elif c == "m":  # m clears OneLine
                flags = flags & ~_ONELINE if sign > 0 else flags | _ONELINE
                saw = True
            elif c == "s":
                flags = flags | _DOTNL if sign > 0 else flags & ~_DOTNL
                saw = True
            elif c == "U":
                flags = flags | _NONGREEDY if sign > 0 else flags & ~_NONGREEDY
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
        return ["(?i:", body, ")"] if self.flags & _FOLD else body

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
        items = _unicode_items(name, negate)
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


def _product(node: list[Any]) -> int:
    """The largest product of nested repeat counts in a node (a literal's field holds its fold flag)."""
    return 1 if node[0] in ("lit", "str") else int(node[3])


def _unhex(c: str) -> int:
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c <= "f":
        return ord(c) - 87
    if "A" <= c <= "F":
        return ord(c) - 55
    return -1


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


def translate(pattern: str) -> str:
    """Check `pattern` as Go's regexp.Compile does; return an RE2 pattern that matches the same strings.

    Raises GoSyntaxError (Go's message) for what Go refuses. Strings reaching us are Unicode text;
    a lone surrogate (possible only through JSON escapes) is what Go's decoders make of it, U+FFFD.
    """
    if not _META.search(pattern):  # no metacharacter: Go and RE2 both read it as the literal text
        return pattern
    if any("\ud800" <= ch <= "\udfff" for ch in pattern):
        pattern = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in pattern)
    return _Parser(pattern).parse()
