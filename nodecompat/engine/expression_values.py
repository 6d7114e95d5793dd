"""Go's reading and printing of expression values, as NFD's expression.go meets them.

`go_atoi` is Go's strconv.Atoi; `parse_version` is Masterminds/semver `NewVersion` (lenient: `1`, `1.2`,
`v1.2.3`, `-pre`, `+build`), written out here because no Python semver package parses the same set; the
pre-release part is dropped before comparing, as NFD does, so `5.15.0-91-generic` is `5.15.0`. `go_quote`
and `values_repr` print strings and value lists as Go's %q and %v do, so messages match NFD's
(pkg/apis/nfd/nodefeaturerule/expression.go). Re-exported by nodecompat.engine.expressions.
"""

from __future__ import annotations

import re

from nodecompat.engine.limits import MAX_ECHOED_VALUE_CHARS

_INT_RE = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SEMVER_RE = re.compile(
    r"v?([0-9]+)(\.[0-9]+)?(\.[0-9]+)?"
    r"(-([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
    r"(\+([0-9A-Za-z\-]+(\.[0-9A-Za-z\-]+)*))?"
)
_UINT64_MAX = (1 << 64) - 1


def go_atoi(s: str) -> int:
    """Go's strconv.Atoi: optional sign, ASCII digits only, int64 range."""
    if not _INT_RE.fullmatch(s):
        raise ValueError(s)
    v = int(s)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(s)
    return v


def parse_version(s: str) -> tuple[int, int, int]:
    """Masterminds/semver v3.5.0 `NewVersion` (CoerceNewVersion, its default; the release NFD's go.mod
    pins), keeping only (major, minor, patch): NFD's extractVersion drops the pre-release.

    ValueError carries semver's own error text. Leading zeros in major/minor/patch are accepted (coerced);
    a numeric pre-release identifier with one is not; there is no length limit in this release.
    """
    m = _SEMVER_RE.fullmatch(s)
    if m is None:
        raise ValueError("invalid semantic version")
    parts = [m.group(1), (m.group(2) or ".0")[1:], (m.group(3) or ".0")[1:]]
    for p in parts:
        if len(p.lstrip("0")) > 20 or int(p) > _UINT64_MAX:
            raise ValueError(f'error parsing version segment: strconv.ParseUint: parsing "{p}": value out of range')
    pre = m.group(5)
    if pre:
        for ident in pre.split("."):
            if ident.isdigit() and len(ident) > 1 and ident.startswith("0"):
                raise ValueError("version segment starts with 0")
    return int(parts[0]), int(parts[1]), int(parts[2])


def values_repr(values: list[str]) -> str:
    """Go's `%v` of a []string, as NFD prints it in error messages; clipped past MAX_ECHOED_VALUE_CHARS
    (NFD prints it whole: a message is not the place for megabytes of a hostile spec's values)."""
    out = "[" + " ".join(values) + "]" if sum(map(len, values)) < MAX_ECHOED_VALUE_CHARS else ""
    if out and len(out) <= MAX_ECHOED_VALUE_CHARS:
        return out
    shown: list[str] = []
    size = 0
    for v in values:
        if size + len(v) > MAX_ECHOED_VALUE_CHARS:
            break
        shown.append(v)
        size += len(v) + 1
    head = " ".join(shown) if shown else values[0][:MAX_ECHOED_VALUE_CHARS] + "…"
    return f"[{head} … ({len(values)} values, {sum(map(len, values))} characters)]"


def atoi_or_error(v: str) -> tuple[int | None, str]:
    try:
        return go_atoi(v), ""
    except ValueError:
        return None, f"not a number {go_quote(v)}"


# strconv.Quote's two-character escapes (Go's appendEscapedRune).
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v"}


def go_quote(s: str) -> str:
    """Go's %q of a string (strconv.Quote), for messages that match NFD's."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
