"""How an evaluated term is reported: one ExpressionVerdict per expression, with what was wanted,
what the node has, and which instance is meant (split from evaluate.py, which decides outcomes).

Instance terms are reported against the instance that satisfied the whole term; when none did,
against the closest one (most expressions held; ties go to the lowest index, and the
flag/attribute part of a mixed feature wins ties over instances).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nodecompat.engine.expressions import ANY, DOES_NOT_EXIST, EXISTS, MatchExpression
from nodecompat.engine.limits import MAX_ACTUAL_NAMES, MAX_ECHOED
from nodecompat.engine.matcher import MultiResult, NamesResult, Outcome
from nodecompat.engine.spec import FeatureTerm
from nodecompat.engine.verdict import ExpressionVerdict

_LABEL_KEYS = ("address", "name", "bdf", "pci_address", "serial", "id")


def expressions_of(term: FeatureTerm) -> list[tuple[str, str, MatchExpression]]:
    out = [(n, "matchExpression", e) for n, e in (term.match_expressions or {}).items()]
    if term.match_name is not None:
        out.append(("", "matchName", term.match_name))
    return out


def expr_verdict(
    feature: str,
    element: str,
    matcher_type: str,
    e: MatchExpression,
    *,
    matched: bool,
    unknown: bool = False,
    actual: list[str] | None = None,
    instance: str = "",
    detail: str = "",
) -> ExpressionVerdict:
    return ExpressionVerdict(
        feature=feature,
        element=element,
        matcher_type=matcher_type,
        op=e.op,
        values=list(e.values),
        type=e.type,
        matched=matched,
        unknown=unknown,
        actual=actual or [],
        instance=instance,
        detail=detail,
    )


def echo(items: Sequence[str], limit: int = MAX_ECHOED) -> str:
    """`a, b, c, d, e and 199995 more`: a list for a message, never longer than `limit` items."""
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def instance_label(feature: str, index: int, attrs: Mapping[str, str]) -> str:
    """`pci.device[3] address=0000:17:00.0`: the index plus a name-like attribute when there is one."""
    for k in _LABEL_KEYS:
        if k in attrs:
            return f"{feature}[{index}] {k}={attrs[k]}"
    return f"{feature}[{index}]"


def _detail(
    e: MatchExpression, element: str, matched: bool, present: bool, value: str | None, error: str | None
) -> str:
    want = e.describe()
    if error:
        return f"cannot evaluate {want}: {error}"
    if e.op == ANY:
        return "any value accepted"
    if e.op == DOES_NOT_EXIST:
        if matched:
            return f"element {element} absent, as wanted"
        return f"wanted {element} absent, but it is present" + (f" ({value})" if value is not None else "")
    if e.op == EXISTS:
        return (
            f"element {element} present" if matched else f"wanted {element} present, element {element} absent"
        )
    if not present:
        return f"wanted {want}, element {element} absent"
    if value is None:
        return f"wanted {want}, but {element} is a flag and has no value"
    return f"{want}: node has {value}" if matched else f"wanted {want}, node has {value}"


def _fa_outcome(m: MultiResult, i: int) -> tuple[bool, bool, str | None, str | None]:
    """(matched, present, value, error) of expression i on the flag/attribute union."""
    fo: Outcome | None = m.flag[i] if m.flag is not None else None
    ao: Outcome | None = m.attr[i] if m.attr is not None else None
    value = ao.value if ao is not None and ao.present else None
    present = bool((fo and fo.present) or (ao and ao.present))
    error = (fo.error if fo else None) or (ao.error if ao else None)
    return m.fa[i], present, value, error


def report_multi(
    feature: str, name: str, m: MultiResult, insts: Sequence[Mapping[str, str]]
) -> list[ExpressionVerdict]:
    has_fa = m.flag is not None or m.attr is not None
    place: int | None = None  # None = flag/attribute part, k = instance k
    if m.fa_matched:
        place = None
    elif any(m.instance_matched):
        place = m.instance_matched.index(True)
    else:
        best = sum(m.fa) if has_fa else -1
        for k, score in enumerate(m.instance_scores()):
            if score > best:
                best, place = score, k
        if not has_fa and place is None:
            return [
                expr_verdict(
                    feature,
                    n,
                    "matchExpression",
                    e,
                    matched=False,
                    detail=f"{name} has no instances on this node",
                )
                for n, e in zip(m.names, m.exprs, strict=True)
            ]
    out = []
    row = m.instance_row(place) if place is not None else []
    for i, (n, e) in enumerate(zip(m.names, m.exprs, strict=True)):
        if place is None:
            matched, present, value, error = _fa_outcome(m, i)
            label = ""
        else:
            o = row[i]
            matched, present, value, error = o.matched, o.present, o.value, o.error
            label = instance_label(name, place, insts[place])
        out.append(
            expr_verdict(
                feature,
                n,
                "matchExpression",
                e,
                matched=matched,
                actual=[value] if value is not None else [],
                instance=label,
                detail=_detail(e, n, matched, present, value, error),
            )
        )
    return out


def report_names(
    feature: str, name: str, e: MatchExpression, r: NamesResult, insts: Sequence[Mapping[str, str]]
) -> ExpressionVerdict:
    want = e.describe()
    label = ""
    if r.matched_instances:
        k = r.matched_instances[0]
        label = instance_label(name, k, insts[k])
    shown = ", ".join(r.matched_names[:10] if r.matched else r.names[:10])
    more = "" if len(r.matched_names if r.matched else r.names) <= 10 else ", ..."
    if r.errors:
        detail = f"cannot evaluate name {want}: {r.errors[0]}"
    elif r.matched:
        detail = f"names matching {want}: {shown}{more}"
    elif not r.names:
        detail = f"wanted a name {want}, {name} has no elements"
    else:
        detail = f"wanted a name {want}, node has {shown}{more}"
    return expr_verdict(
        feature,
        "",
        "matchName",
        e,
        matched=r.matched,
        actual=r.names[:MAX_ACTUAL_NAMES],
        instance=label,
        detail=detail,
    )
