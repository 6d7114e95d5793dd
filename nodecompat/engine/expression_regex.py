"""RE2 programs for an InRegexp expression's values, within nodecompat's regex memory budgets.

Regexes are compiled with RE2 (google-re2), the engine Go's `regexp` implements, so patterns (already
translated from Go's dialect by nodecompat.engine.goregexp) mean the same thing and cannot backtrack
catastrophically. Each pattern gets at most MAX_REGEX_MEM; an expression's values are searched through one
union program sized from the patterns' program sizes (at most MAX_SPEC_REGEX_MEM), or one program per value
when the union does not fit (nodecompat.engine.limits). Serves NFD's MatchInRegexp
(pkg/apis/nfd/nodefeaturerule/expression.go): any value matching is a match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import re2

from nodecompat.engine.limits import MAX_REGEX_MEM, MAX_SPEC_REGEX_MEM

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported to the user, not logged to stderr by C++
_RE2_OPTIONS.max_mem = MAX_REGEX_MEM
# RE2 memory granted to an expression's union of patterns: a base plus, per pattern, room for its
# program (RE2 keeps forward and reverse programs within max_mem, ~16 bytes an instruction) and DFA.
_UNION_BASE_MEM = 256 << 10
_PER_PATTERN_MEM = 8 << 10
_PER_INSTRUCTION_MEM = 48


def _re2_options(max_mem: int) -> Any:
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = max_mem
    return opts


_SMALL_REGEX_MEM = 64 << 10
_SMALL_OPTIONS = _re2_options(_SMALL_REGEX_MEM)


def _compile(pattern: str, options: Any) -> Any:
    """An RE2 program owned by the caller alone. `re2.compile` keeps its last 128 programs in a
    module-level LRU (up to max_mem each, 1 GiB at RE2's default): that hidden cache, not ours, is
    what made distinct regex-heavy specs cost ~79 MiB each. `re2._Regexp` is the class re2.compile
    builds, without the cache; its memory goes when the expression goes."""
    return re2._Regexp(pattern, options)


def _re2_detail(exc: Exception) -> str:
    return exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)


def compile_any(translated: list[str]) -> tuple[Any, int, str | None]:
    """RE2 search for any of `translated` (RE2 patterns): (program with .search(str), RE2 memory bytes it
    may use, None), or (None, 0, message) when one pattern needs more than MAX_REGEX_MEM (value index named).
    A lone pattern keeps its own program; several are tried as one union program first."""
    need = _UNION_BASE_MEM
    for i, t in enumerate(translated):
        try:  # most patterns are small: try a small budget first, and keep it for a lone pattern
            one, budget = _compile(t, _SMALL_OPTIONS), _SMALL_REGEX_MEM
        except re2.error:
            try:
                one, budget = _compile(t, _RE2_OPTIONS), MAX_REGEX_MEM
            except re2.error as exc:
                return (
                    None,
                    0,
                    f"value[{i}] needs more than {MAX_REGEX_MEM} bytes of compiled RE2 program "
                    f"(nodecompat's per-pattern limit, MAX_REGEX_MEM): {_re2_detail(exc)}",
                )
        need += _PER_PATTERN_MEM + _PER_INSTRUCTION_MEM * (one.programsize + one.reverseprogramsize)
        if len(translated) == 1:
            return one, budget, None
    budget = min(need, MAX_SPEC_REGEX_MEM)
    try:
        return _compile("|".join(f"(?:{t})" for t in translated), _re2_options(budget)), budget, None
    except re2.error:
        return _AnyOf([_compile(t, _RE2_OPTIONS) for t in translated]), MAX_REGEX_MEM * len(translated), None


@dataclass(frozen=True)
class _AnyOf:
    regexes: list[Any]

    def search(self, value: str) -> Any:
        return next((m for r in self.regexes if (m := r.search(value)) is not None), None)
