"""One feature term against one feature: NFD's MatchMulti / MatchNamesMulti, keeping every outcome.

NFD evaluates a term's `matchExpressions` against the flag and attribute parts of a feature
together (an expression may hold in either; DoesNotExist must hold in both) and against each
instance separately (one instance must satisfy them all). It then only returns a yes/no and a set
of "matched expressions". We keep every per-expression, per-part, per-instance outcome instead,
so the evaluator can say *why* a term failed and on which instance, and derive NFD's legacy
status set (`nfd_matched`) from the same data. Evaluation errors (malformed expressions NFD
tolerates until use, or non-numeric node data under Gt) are recorded, not raised; the
`match_*` helpers at the bottom re-raise them to mirror NFD's functions for the conformance tests.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nodecompat.engine.expressions import DOES_NOT_EXIST, IN, IN_REGEXP, NOT_IN, ExpressionError, MatchExpression
from nodecompat.engine.limits import MAX_ECHOED
from nodecompat.engine.plain import Plain

# Evaluation errors kept per term (NFD itself stops at the first one).
MAX_ERRORS_KEPT = MAX_ECHOED


@dataclass(slots=True, repr=False, eq=False)
class Outcome(Plain):
    """One expression against one place (the flag part, the attribute part or one instance)."""

    matched: bool
    present: bool
    value: str | None = None  # the attribute value, None for a flag or a missing element
    error: str | None = None


def _eval(expr: MatchExpression, present: bool, value: str | None, errors: list[str]) -> Outcome:
    try:
        return Outcome(expr.compiled().evaluate(present, value), present, value)
    except ExpressionError as exc:
        errors.append(str(exc))
        return Outcome(False, present, value, str(exc))


@dataclass(repr=False, eq=False)
class ColumnCache(Plain):
    """Per-evaluation memo: one attribute's values over a feature's instances, and node values as numbers."""

    columns: dict[tuple[int, str], list[str | None]] = field(default_factory=dict)
    numbers: dict[str, tuple[int | None, str]] = field(default_factory=dict)

    def values(self, instances: list[Mapping[str, str]], name: str) -> list[str | None]:
        """`[inst.get(name) for inst in instances]`, computed once per (instance list, name)."""
        key = (id(instances), name)
        vals = self.columns.get(key)
        if vals is None:
            vals = self.columns[key] = [inst.get(name) for inst in instances]
        return vals


@dataclass(repr=False, eq=False)
class MultiResult(Plain):
    """Everything MatchMulti computes for one term's matchExpressions."""

    names: list[str]
    exprs: list[MatchExpression]
    flag: list[Outcome] | None  # per expression; None when the feature has no flag part
    attr: list[Outcome] | None  # per expression; None when it has no attribute part
    fa: list[bool]  # per expression: held on the flag/attribute union (DoesNotExist: on both)
    fa_matched: bool  # NFD's key/value isMatch (needs a flag or attribute part)
    instance_matched: list[bool]
    errors: list[str] = field(default_factory=list)  # the first few, in NFD's (instance, expression) order
    nfd_matched: set[str] = field(default_factory=set)  # NFD's matchedExpressions keys
    elements: list[Mapping[str, str]] = field(default_factory=list)  # NFD's matched elements
    error_count: int = 0  # all evaluation errors, including those not kept in `errors`
    # Per expression: the instances' values (None = absent), outcomes and errors by instance index.
    columns: list[tuple[list[str | None], list[bool], dict[int, str]]] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return self.fa_matched or any(self.instance_matched)

    def instance_row(self, k: int) -> list[Outcome]:
        """Every expression's outcome on instance k."""
        return [Outcome(col[k], vals[k] is not None, vals[k], errs.get(k)) for vals, col, errs in self.columns]

    def instance_scores(self) -> list[int]:
        """How many expressions held on each instance."""
        return [sum(row) for row in zip(*(col for _, col, _ in self.columns), strict=True)]


def match_multi(
    exprs: Mapping[str, MatchExpression],
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
    cache: ColumnCache | None = None,
) -> MultiResult:
    """NFD's MatchMulti with failFast=false; `None` means that part of the feature is absent.

    `cache` (one per evaluation of a node) reuses the instances' attribute columns and parsed numbers.
    """
    names = list(exprs)
    ex = [exprs[n] for n in names]
    errors: list[str] = []
    flag_set = None if flags is None else (flags if isinstance(flags, set | frozenset) else set(flags))
    res_flag: list[Outcome] | None = [] if flag_set is not None else None
    res_attr: list[Outcome] | None = [] if attrs is not None else None
    fa: list[bool] = []
    nfd_matched: set[str] = set()
    kv_elems: list[dict[str, str]] = []
    fa_matched = flag_set is not None or attrs is not None
    for n, e in zip(names, ex, strict=True):
        mk = mv = False
        skip_values = False
        if flag_set is not None and res_flag is not None:
            o = _eval(e, n in flag_set, None, errors)
            res_flag.append(o)
            mk = o.matched
            if mk:
                kv_elems.append({"Name": n})
                nfd_matched.add(n)
            elif e.op == DOES_NOT_EXIST:
                skip_values = True  # NFD `continue`s: the attribute part is not looked at
        if attrs is not None and res_attr is not None:
            if skip_values:
                res_attr.append(Outcome(False, n in attrs, attrs.get(n)))
            else:
                o = _eval(e, n in attrs, attrs.get(n), errors)
                res_attr.append(o)
                mv = o.matched
                if mv:
                    kv_elems.append({"Name": n, "Value": attrs.get(n, "")})
                    nfd_matched.add(n)
        if e.op == DOES_NOT_EXIST:
            ok = (
                (flag_set is None or mk)
                and (attrs is None or mv)
                and (flag_set is not None or attrs is not None)
            )
        else:
            ok = mk or mv
        fa.append(ok)
        if not ok:
            fa_matched = False
    kv_elems.sort(key=lambda d: d["Name"])

    inst_list = instances if isinstance(instances, list) else list(instances or ())
    columns = []
    for n, e in zip(names, ex, strict=True):
        vals = cache.values(inst_list, n) if cache is not None else [inst.get(n) for inst in inst_list]
        col, errs = e.compiled().column(vals, cache.numbers if cache is not None else None)
        columns.append((vals, col, errs))
        if any(col):
            nfd_matched.add(n)
    if len(columns) == 1:
        inst_ok = list(columns[0][1])
    elif columns:
        inst_ok = list(map(all, zip(*(c for _, c, _ in columns), strict=True)))
    else:
        inst_ok = [True] * len(inst_list)
    inst_elems = list(itertools.compress(inst_list, inst_ok))
    error_count = len(errors) + sum(len(errs) for _, _, errs in columns)
    if error_count > len(errors):
        # NFD stops at the first error in (instance, expression) order; keep the first few in that order.
        order = heapq.merge(*(zip(errs, itertools.repeat(j)) for j, (_, _, errs) in enumerate(columns)))
        errors.extend(columns[j][2][k] for k, j in itertools.islice(order, MAX_ERRORS_KEPT))
    return MultiResult(
        names=names,
        exprs=ex,
        flag=res_flag,
        attr=res_attr,
        fa=fa,
        fa_matched=fa_matched,
        instance_matched=inst_ok,
        errors=errors,
        nfd_matched=nfd_matched,
        elements=[*kv_elems, *inst_elems],
        error_count=error_count,
        columns=columns,
    )


# A regex made only of these characters, optionally anchored by a leading `^` and/or a trailing `$`,
# matches literally in RE2 and in Go's regexp (no metacharacter, no escape, no flag, no class): so
# `search` is a prefix/suffix/equality/substring test. `$` without (?m) is end-of-text in both.
_LITERAL = re.compile(r"\^?[A-Za-z0-9_\-,:=@/ ]*\$?")


def _literal_test(pattern: str) -> Callable[[str], bool] | None:
    """str -> bool exactly equal to RE2 `search(pattern, name) is not None`, or None if not literal."""
    if _LITERAL.fullmatch(pattern) is None:
        return None
    head = pattern.startswith("^")
    tail = pattern.endswith("$") and len(pattern) > (1 if head else 0)
    lit = pattern[1 if head else 0 : len(pattern) - 1 if tail else len(pattern)]
    if head and tail:
        return lit.__eq__
    if head:
        return lambda n: n.startswith(lit)
    if tail:
        return lambda n: n.endswith(lit)
    return lambda n: lit in n


def _name_plan(expr: MatchExpression) -> Callable[[Iterable[str]], set[str]] | None:
    """Names -> the names `expr` holds for (present=True), as set operations; None when the expression
    needs the general path (errors to report, a regex that is not a plain literal, other ops).

    Exactly CompiledExpression.evaluate(True, name) for every name; kept on the expression's compiled
    form so a spec's plans are built once."""
    op, values = expr.op, expr.values
    if not values:
        return None
    if op == IN:
        wanted = frozenset(values)
        return lambda names: set(wanted.intersection(names))
    if op == NOT_IN:
        unwanted = frozenset(values)
        return lambda names: set(names).difference(unwanted)
    if op == IN_REGEXP:
        if expr.compiled().static_problems():
            return None
        tests = [_literal_test(v) for v in values]
        if any(t is None for t in tests):
            return None
        checks = [t for t in tests if t is not None]
        exact = {v[1:-1] for v in values if len(v) >= 2 and v[0] == "^" and v[-1] == "$"}
        if exact and len(exact) == len(checks):
            return lambda names: exact.intersection(names)
        if len(checks) == 1:
            only = checks[0]
            return lambda names: {n for n in names if only(n)}
        return lambda names: {n for n in names if any(t(n) for t in checks)}
    return None


_PLANS: dict[int, tuple[MatchExpression, Callable[[Iterable[str]], set[str]] | None]] = {}


def name_plan(expr: MatchExpression) -> Callable[[Iterable[str]], set[str]] | None:
    """_name_plan(expr), built once per expression object (bounded memo keyed by identity)."""
    hit = _PLANS.get(id(expr))
    if hit is not None and hit[0] is expr:
        return hit[1]
    plan = _name_plan(expr)
    if len(_PLANS) >= 4096:
        _PLANS.clear()
    _PLANS[id(expr)] = (expr, plan)
    return plan


@dataclass(repr=False, eq=False)
class NamesResult(Plain):
    """Everything MatchNamesMulti computes for one matchName expression."""

    matched: bool
    names: list[str]  # every name looked at (flags, attribute keys, instance attribute names)
    matched_names: list[str]
    matched_instances: list[int]
    errors: list[str] = field(default_factory=list)
    elements: list[Mapping[str, str]] = field(default_factory=list)


def match_names_multi(
    expr: MatchExpression,
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> NamesResult:
    """NFD's MatchNamesMulti: the expression against every element *name* (present=True).

    Each distinct name is evaluated once (instances share attribute names), so the cost grows with
    the distinct names, not with the number of instances.
    """
    plan = name_plan(expr)
    if plan is not None:
        return _names_by_plan(plan, flags, attrs, instances)
    errors: list[str] = []
    memo: dict[str, bool] = {}

    def hit(k: str) -> bool:
        m = memo.get(k)
        if m is None:
            m = memo[k] = _eval(expr, True, k, errors).matched
        return m

    kv: list[dict[str, str]] = []
    seen: set[str] = set()
    for k in sorted(flags or ()):
        seen.add(k)
        if hit(k):
            kv.append({"Name": k})
    for k in sorted(attrs or {}):
        seen.add(k)
        if hit(k):
            kv.append({"Name": k, "Value": (attrs or {})[k]})
    kv.sort(key=lambda d: d["Name"])
    inst_list = list(instances or ())
    inst_names = set().union(*inst_list) if inst_list else set()
    for k in sorted(inst_names - memo.keys()):
        hit(k)
    seen |= inst_names
    matching = {k for k, m in memo.items() if m}
    inst_idx = [i for i, inst in enumerate(inst_list) if not matching.isdisjoint(inst)]
    elements: list[Mapping[str, str]] = [*kv, *(inst_list[i] for i in inst_idx)]
    return NamesResult(
        matched=bool(elements) and not errors,
        names=sorted(seen),
        matched_names=sorted(matching),
        matched_instances=inst_idx,
        errors=errors,
        elements=elements,
    )


def _names_by_plan(
    plan: Callable[[Iterable[str]], set[str]],
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> NamesResult:
    """match_names_multi for an expression that has a set plan (no errors possible)."""
    flag_names = flags if isinstance(flags, set | frozenset) else set(flags or ())
    attr_map = attrs or {}
    inst_list = list(instances or ())
    inst_names: set[str] = set().union(*inst_list) if inst_list else set()
    seen = flag_names | attr_map.keys() | inst_names
    matching = plan(seen)
    kv: list[dict[str, str]] = [{"Name": k} for k in sorted(matching.intersection(flag_names))]
    kv.extend({"Name": k, "Value": attr_map[k]} for k in sorted(matching.intersection(attr_map)))
    kv.sort(key=lambda d: d["Name"])
    inst_idx = [i for i, inst in enumerate(inst_list) if not matching.isdisjoint(inst)] if matching else []
    elements: list[Mapping[str, str]] = [*kv, *(inst_list[i] for i in inst_idx)]
    return NamesResult(
        matched=bool(elements),
        names=sorted(seen),
        matched_names=sorted(matching),
        matched_instances=inst_idx,
        errors=[],
        elements=elements,
    )


# -- NFD's function-level helpers (used by the conformance tests and anyone wanting NFD's API) ------
def _raise_first(errors: list[str]) -> None:
    if errors:
        raise ExpressionError(errors[0])


def nfd_match_multi(
    exprs: Mapping[str, MatchExpression],
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> tuple[bool, list[Mapping[str, str]]]:
    """MatchMulti: (matched, matched elements); raises ExpressionError like NFD."""
    r = match_multi(exprs, flags, attrs, instances)
    _raise_first(r.errors)
    if not r.matched:
        return False, []
    return True, r.elements


def nfd_match_names_multi(
    expr: MatchExpression,
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> tuple[bool, list[Mapping[str, str]]]:
    """MatchNamesMulti: (matched, matched elements); raises ExpressionError like NFD."""
    r = match_names_multi(expr, flags, attrs, instances)
    _raise_first(r.errors)
    return r.matched, r.elements
