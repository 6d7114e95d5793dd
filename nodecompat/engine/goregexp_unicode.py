"""Go's Unicode class names for \\p{...} and \\P{...}, spelled as RE2 character-class items.

Go 1.25+ accepts names RE2 does not know (`\\p{Letter}`, `\\p{greek}`, `\\p{Assigned}`, `\\p{Cn}`, `\\p{LC}`,
`\\p{ASCII}`: Unicode TR18 loose matching of category aliases, case, spaces, underscores and hyphens). This module
holds Go's tables (unicode.Categories, unicode.Scripts, unicode.CategoryAliases; Unicode 15.0.0), Go's
canonicalName, and the RE2 items each name stands for (ranges computed with RE2's own tables when RE2 has no
name for the set). Written from Go's src/regexp/syntax/parse.go and src/unicode (Go 1.26, the toolchain NFD's
go.mod names) for nodecompat.engine.goregexp.
"""

from __future__ import annotations

import functools
import threading

import re2

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


def unicode_items(name: str, negate: bool) -> str | None:
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
