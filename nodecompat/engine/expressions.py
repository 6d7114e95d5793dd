"""One match expression against one element: NFD's `evaluateMatchExpression`, quirks included.

NFD (pkg/apis/nfd/nodefeaturerule/expression.go) checks an expression lazily: a bad value count,
regex or number is only noticed when the expression meets a *present* element, and a missing
element simply does not match. `CompiledExpression.evaluate` keeps exactly that order so NFD
compatibility mode behaves like NFD; `static_problems` finds the same problems up front for the
strict parser. Regexes are compiled once per expression with RE2 (google-re2), the engine Go's
`regexp` implements, so patterns mean the same thing and cannot backtrack catastrophically.

`type: version` follows Masterminds/semver `NewVersion` (lenient: `1`, `1.2`, `v1.2.3`, `-pre`,
`+build`), written out here because no Python semver package parses the same set; the
pre-release part is dropped before comparing, as NFD does, so `5.15.0-91-generic` is `5.15.0`.

Split in modules: nodecompat.engine.expression_ops (op names and groups), nodecompat.engine.expression_values
(Go's Atoi, semver, %q and %v), nodecompat.engine.expression_regex (RE2 programs within the memory budgets);
this module holds MatchExpression and CompiledExpression and re-exports the public names of the others.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine.expression_ops import (
    ANY,
    DOES_NOT_EXIST,
    EXISTS,
    GE,
    GE_LE,
    GT,
    GT_LT,
    IN,
    IN_REGEXP,
    IS_FALSE,
    IS_TRUE,
    LE,
    LIST_OPS,
    LT,
    NO_VALUE_OPS,
    NOT_IN,
    NUMERIC_OPS,
    ONE_VALUE_OPS,
    OPS,
    TWO_VALUE_OPS,
    TYPE_VERSION,
    TYPES,
    VALUE_OPS,
)
from nodecompat.engine.expression_values import atoi_or_error, go_atoi, go_quote, parse_version, values_repr
from nodecompat.engine.limits import MAX_ECHOED_VALUE_CHARS
from nodecompat.engine.plain import Plain

__all__ = [
    "ANY",
    "DOES_NOT_EXIST",
    "EXISTS",
    "GE",
    "GE_LE",
    "GT",
    "GT_LT",
    "IN",
    "IN_REGEXP",
    "IS_FALSE",
    "IS_TRUE",
    "LE",
    "LIST_OPS",
    "LT",
    "NOT_IN",
    "NO_VALUE_OPS",
    "NUMERIC_OPS",
    "ONE_VALUE_OPS",
    "OPS",
    "TWO_VALUE_OPS",
    "TYPES",
    "TYPE_VERSION",
    "VALUE_OPS",
    "CompiledExpression",
    "ExpressionError",
    "MatchExpression",
    "go_atoi",
    "go_quote",
    "parse_version",
]


class ExpressionError(ValueError):
    """The expression cannot be evaluated (bad op, value count, regex, number or version)."""


@dataclass(repr=False, eq=False)
class MatchExpression(Plain):
    """`{op, value, type}` as written in a spec. `values` keeps the user's order."""

    op: str = ""
    values: list[str] = field(default_factory=list)
    type: str = ""
    _compiled: CompiledExpression | None = field(default=None, init=False, repr=False, compare=False)

    def compiled(self) -> CompiledExpression:
        """The evaluator for this expression, built once (regexes and numbers parsed once)."""
        if self._compiled is None:
            self._compiled = CompiledExpression(self)
        return self._compiled

    def describe(self) -> str:
        """Short human form, e.g. `In [10de, 1af4]` or `Ge [5.4] (version)`."""
        text = self.op or "(any)"
        if self.values:
            joined = ", ".join(self.values) if sum(map(len, self.values)) < MAX_ECHOED_VALUE_CHARS else ""
            if not joined:  # a hostile list: name a few values, count the rest
                joined = values_repr(self.values)[1:-1]
            text += " [" + joined + "]"
        if self.type and self.op in NUMERIC_OPS:
            text += f" ({self.type})"
        return text



def _go_expression(e: MatchExpression) -> str:
    """Go's %v of a *MatchExpression, as NFD prints it: &{Op [values] type}."""
    return f"&{{{e.op} {values_repr(e.values)} {e.type}}}"



class CompiledExpression:
    """An expression ready to evaluate; raises ExpressionError exactly where NFD returns an error."""

    __slots__ = (
        "_any_regex",
        "_num",
        "_num_error",
        "_num_problem",
        "_regex_error",
        "_value_set",
        "expr",
        "limit_error",
        "memory_bytes",
        "regex_problem",
    )

    def __init__(self, expr: MatchExpression) -> None:
        self.expr = expr
        self._regex_error: str | None = None  # NFD's error text, raised when NFD would raise it
        self.regex_problem: str | None = None  # the same, located and explained, for strict mode
        self.limit_error: str | None = None  # over nodecompat's regex memory limits: refused in both modes
        self.memory_bytes = 0  # RE2 memory (max_mem budgets) this expression's compiled regexes may use
        self._num: tuple[Any, ...] | None = None
        self._num_error: str | None = None
        self._num_problem: str | None = None  # _num_error located and explained, for strict mode
        self._value_set = frozenset(expr.values)
        self._any_regex: Any = None
        if expr.op == IN_REGEXP and expr.values:
            self._prepare_regexes()
        if expr.op in NUMERIC_OPS:
            self._prepare_numbers()

    def _prepare_regexes(self) -> None:
        """Check each value as Go's regexp.Compile would (NFD's dialect), then compile RE2 programs
        within MAX_REGEX_MEM each; keep one union program (or, if that does not fit, one per value).
        Go's dialect and RE2 are imported here, by the first regex: a spec without one (and `nodecompat
        validate` for it, issue 11's start-up row) never pays for them (~8 ms)."""
        from nodecompat.engine import goregexp
        from nodecompat.engine.expression_regex import compile_any

        e = self.expr
        translated = []
        for i, v in enumerate(e.values):
            try:
                translated.append(goregexp.translate(v))
            except goregexp.GoSyntaxError as exc:
                # expression.go, case MatchInRegexp (the "expressiom" typo is NFD's).
                self._regex_error = (
                    f"invalid expressiom, 'value' field must only contain valid regexps for Op {go_quote(e.op)}"
                    f" (have {values_repr(e.values)})"
                )
                self.regex_problem = (
                    f"value[{i}] {go_quote(v)} is not a regexp NFD accepts: {exc} "
                    "(NFD compiles patterns with Go's regexp package)"
                )
                return
        self._any_regex, self.memory_bytes, self.limit_error = compile_any(translated)

    def _prepare_numbers(self) -> None:
        e = self.expr
        want = 1 if e.op in ONE_VALUE_OPS else 2
        if len(e.values) != want:
            count = "exactly one element" if want == 1 else "exactly two elements"
            self._num_error = (
                f"invalid expression, 'value' field must contain {count} for Op {go_quote(e.op)} "
                f"(have {values_repr(e.values)})"
            )
            return
        if e.type == TYPE_VERSION:
            versions = []
            for i, v in enumerate(e.values):
                try:
                    versions.append(parse_version(v))
                except ValueError as exc:
                    self._num_error = f"not a version {go_quote(v)} in {_go_expression(e)}"  # expression.go
                    self._num_problem = (
                        f"value[{i}] {go_quote(v)} is not a version NFD accepts ({exc}; "
                        "NFD parses versions with Masterminds/semver v3.5.0 NewVersion)"
                    )
                    return
            self._num = tuple(versions)
            return
        if e.type != "":
            self._num_error = (  # expression.go
                f"invalid expression, 'type' field only accepts \"version\" value for Op {go_quote(e.op)} "
                f"(have {go_quote(e.type)})"
            )
            self._num_problem = f'unsupported value type {e.type!r} for Op {e.op!r} (only "version")'
            return
        nums = []
        for v in e.values:
            try:
                nums.append(go_atoi(v))
            except ValueError:
                self._num_error = f"not a number {go_quote(v)} in {_go_expression(e)}"  # expression.go
                self._num_problem = f"not a number {go_quote(v)} in {e.op} {values_repr(e.values)}"
                return
        if want == 2 and nums[0] >= nums[1]:
            self._num_error = (
                f"invalid expression, value[0] must be less than Value[1] for Op {go_quote(e.op)} "
                f"(have {values_repr(e.values)})"
            )
            return
        self._num = tuple(nums)

    # -- checks ----------------------------------------------------------------------------------
    def static_problems(self) -> list[str]:
        """Every problem NFD would hit when this expression meets a present element."""
        e = self.expr
        if e.op not in OPS:
            return [f"unknown op {e.op!r} (one of {', '.join(o for o in OPS if o)}, or empty for any)"]
        problems: list[str] = []
        if e.op in NO_VALUE_OPS and e.values:
            problems.append(f"{e.op or 'the any op'} takes no values (have {len(e.values)})")
        if e.op in LIST_OPS and not e.values:
            problems.append(f"{e.op} needs at least one value")
        if self.regex_problem:
            problems.append(self.regex_problem)
        if self._num_error:
            problems.append(self._num_problem or self._num_error)
        if e.type not in TYPES and e.op not in NUMERIC_OPS:
            problems.append(f'unknown type {e.type!r} (only "version" or empty)')
        return problems

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, present: bool, value: str | None) -> bool:
        """NFD's evaluateMatchExpression(valid=present, value). `value=None` is a flag (no value)."""
        e = self.expr
        op = e.op
        if op not in OPS:
            raise ExpressionError(f"invalid Op {go_quote(op)}")
        if op in (ANY, EXISTS, DOES_NOT_EXIST):
            if e.values:
                raise ExpressionError(
                    f"invalid expression, 'value' field must be empty for Op {go_quote(op)} "
                    f"(have {values_repr(e.values)})"
                )
            if op == ANY:
                return True
            return present if op == EXISTS else not present
        if not present or value is None:
            return False
        if op in (IN, NOT_IN):
            if not e.values:
                raise ExpressionError(
                    f"invalid expression, 'value' field must be non-empty for Op {go_quote(op)}"
                )
            found = value in self._value_set
            return found if op == IN else not found
        if op == IN_REGEXP:
            if not e.values:
                raise ExpressionError(
                    f"invalid expression, 'value' field must be non-empty for Op {go_quote(op)}"
                )
            if self._regex_error:
                raise ExpressionError(self._regex_error)
            if self.limit_error:
                raise ExpressionError(self.limit_error)
            assert self._any_regex is not None
            return self._any_regex.search(value) is not None
        if op in NUMERIC_OPS:
            return self._compare(value)
        # IsTrue / IsFalse
        if e.values:
            raise ExpressionError(
                f"invalid expression, 'value' field must be empty for Op {go_quote(op)} "
                f"(have {values_repr(e.values)})"
            )
        return value == ("true" if op == IS_TRUE else "false")

    def column(
        self, values: Sequence[str | None], numbers: dict[str, tuple[int | None, str]] | None = None
    ) -> tuple[list[bool], dict[int, str]]:
        """evaluate() over many attribute values (None = absent): (results, {index: error}).

        The per-instance hot loop of the evaluator: common ops run as C-level maps, and otherwise
        each distinct value is evaluated once, so the cost grows with distinct node values rather
        than instances. `numbers` caches Go's Atoi of node values across expressions (value ->
        (number or None, error)). Results and errors are exactly evaluate()'s.
        """
        e = self.expr
        op = e.op
        if not e.values:
            if op == EXISTS:
                return list(map(operator.is_not, values, itertools.repeat(None))), {}
            if op == DOES_NOT_EXIST:
                return list(map(operator.is_, values, itertools.repeat(None))), {}
            if op == ANY:
                return [True] * len(values), {}
            if op == IS_TRUE:
                return list(map(operator.eq, values, itertools.repeat("true"))), {}
            if op == IS_FALSE:
                return list(map(operator.eq, values, itertools.repeat("false"))), {}
        elif op == IN:
            return list(map(self._value_set.__contains__, values)), {}
        elif op == NOT_IN:
            absent_or_in = self._value_set | {None}
            return list(map(operator.not_, map(absent_or_in.__contains__, values))), {}
        elif op in NUMERIC_OPS and e.type == "" and self._num is not None and numbers is not None:
            return self._int_column(values, numbers)
        memo: dict[str | None, tuple[bool, str | None]] = {v: self._one(v is not None, v) for v in set(values)}
        out = [memo[v][0] for v in values]
        errors = {i: err for i, v in enumerate(values) if (err := memo[v][1]) is not None}
        return out, errors

    def _int_column(
        self, values: Sequence[str | None], numbers: dict[str, tuple[int | None, str]]
    ) -> tuple[list[bool], dict[int, str]]:
        assert self._num is not None
        lo = self._num[0]
        hi = self._num[-1]
        test = {
            GT: lambda n: n > lo,
            GE: lambda n: n >= lo,
            LT: lambda n: n < lo,
            LE: lambda n: n <= lo,
            GT_LT: lambda n: lo < n < hi,
            GE_LE: lambda n: lo <= n <= hi,
        }[self.expr.op]
        out: list[bool] = []
        errors: dict[int, str] = {}
        for i, v in enumerate(values):
            if v is None:
                out.append(False)
                continue
            parsed = numbers.get(v)
            if parsed is None:
                parsed = numbers[v] = atoi_or_error(v)
            if parsed[0] is None:
                out.append(False)
                errors[i] = parsed[1]
            else:
                out.append(test(parsed[0]))
        return out, errors

    def _one(self, present: bool, value: str | None) -> tuple[bool, str | None]:
        try:
            return self.evaluate(present, value), None
        except ExpressionError as exc:
            return False, str(exc)

    def _compare(self, value: str) -> bool:
        e = self.expr
        op = e.op
        count_error = self._num_error is not None and self._num_error.startswith(
            "invalid expression, 'value'"
        )
        if count_error:
            raise ExpressionError(self._num_error)
        lhs: Any
        if e.type == TYPE_VERSION:
            try:
                lhs = parse_version(value)
            except ValueError:
                raise ExpressionError(f"not a version {go_quote(value)}") from None  # expression.go
        elif e.type != "":
            raise ExpressionError(self._num_error or f"unsupported value type {e.type!r}")
        else:
            try:
                lhs = go_atoi(value)
            except ValueError:
                raise ExpressionError(f"not a number {go_quote(value)}") from None
        if self._num_error:
            raise ExpressionError(self._num_error)
        assert self._num is not None
        r = self._num
        if op == GT:
            return bool(lhs > r[0])
        if op == GE:
            return bool(lhs >= r[0])
        if op == LT:
            return bool(lhs < r[0])
        if op == LE:
            return bool(lhs <= r[0])
        if op == GT_LT:
            return bool(r[0] < lhs < r[1])
        return bool(r[0] <= lhs <= r[1])
