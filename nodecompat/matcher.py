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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nodecompat.expressions import DOES_NOT_EXIST, ExpressionError, MatchExpression


@dataclass(slots=True)
class Outcome:
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


@dataclass
class MultiResult:
    """Everything MatchMulti computes for one term's matchExpressions."""

    names: list[str]
    exprs: list[MatchExpression]
    flag: list[Outcome] | None  # per expression; None when the feature has no flag part
    attr: list[Outcome] | None  # per expression; None when it has no attribute part
    fa: list[bool]  # per expression: held on the flag/attribute union (DoesNotExist: on both)
    fa_matched: bool  # NFD's key/value isMatch (needs a flag or attribute part)
    instances: list[list[Outcome]]  # per instance, per expression
    instance_matched: list[bool]
    errors: list[str] = field(default_factory=list)
    nfd_matched: set[str] = field(default_factory=set)  # NFD's matchedExpressions keys
    elements: list[dict[str, str]] = field(default_factory=list)  # NFD's matched elements

    @property
    def matched(self) -> bool:
        return self.fa_matched or any(self.instance_matched)


def match_multi(
    exprs: Mapping[str, MatchExpression],
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> MultiResult:
    """NFD's MatchMulti with failFast=false; `None` means that part of the feature is absent."""
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

    inst_res: list[list[Outcome]] = []
    inst_ok: list[bool] = []
    inst_elems: list[dict[str, str]] = []
    for inst in instances or ():
        row = [_eval(e, n in inst, inst.get(n), errors) for n, e in zip(names, ex, strict=True)]
        inst_res.append(row)
        ok = all(o.matched for o in row)
        inst_ok.append(ok)
        for n, o in zip(names, row, strict=True):
            if o.matched:
                nfd_matched.add(n)
        if ok:
            inst_elems.append(dict(inst))
    return MultiResult(
        names=names,
        exprs=ex,
        flag=res_flag,
        attr=res_attr,
        fa=fa,
        fa_matched=fa_matched,
        instances=inst_res,
        instance_matched=inst_ok,
        errors=errors,
        nfd_matched=nfd_matched,
        elements=kv_elems + inst_elems,
    )


@dataclass
class NamesResult:
    """Everything MatchNamesMulti computes for one matchName expression."""

    matched: bool
    names: list[str]  # every name looked at (flags, attribute keys, instance attribute names)
    matched_names: list[str]
    matched_instances: list[int]
    errors: list[str] = field(default_factory=list)
    elements: list[dict[str, str]] = field(default_factory=list)


def match_names_multi(
    expr: MatchExpression,
    flags: Iterable[str] | None,
    attrs: Mapping[str, str] | None,
    instances: Sequence[Mapping[str, str]] | None,
) -> NamesResult:
    """NFD's MatchNamesMulti: the expression against every element *name* (present=True)."""
    errors: list[str] = []
    kv: list[dict[str, str]] = []
    seen: set[str] = set()
    matched_names: set[str] = set()
    for k in sorted(flags or ()):
        seen.add(k)
        if _eval(expr, True, k, errors).matched:
            kv.append({"Name": k})
            matched_names.add(k)
    for k in sorted(attrs or {}):
        seen.add(k)
        if _eval(expr, True, k, errors).matched:
            kv.append({"Name": k, "Value": (attrs or {})[k]})
            matched_names.add(k)
    kv.sort(key=lambda d: d["Name"])
    inst_elems: list[dict[str, str]] = []
    inst_idx: list[int] = []
    for i, inst in enumerate(instances or ()):
        hit = False
        for k in sorted(inst):
            seen.add(k)
            if _eval(expr, True, k, errors).matched:
                hit = True
                matched_names.add(k)
        if hit:
            inst_elems.append(dict(inst))
            inst_idx.append(i)
    elements = kv + inst_elems
    return NamesResult(
        matched=bool(elements) and not errors,
        names=sorted(seen),
        matched_names=sorted(matched_names),
        matched_instances=inst_idx,
        errors=errors,
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
) -> tuple[bool, list[dict[str, str]]]:
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
) -> tuple[bool, list[dict[str, str]]]:
    """MatchNamesMulti: (matched, matched elements); raises ExpressionError like NFD."""
    r = match_names_multi(expr, flags, attrs, instances)
    _raise_first(r.errors)
    return r.matched, r.elements
