"""Rendering a Verdict as tables a person reads: one per evaluated set, with a pass count.

NFD's table lists OK/FAIL per expression and no totals; users of the prototype liked per-group pass
counts (PR #1872), so each set header says `3/4 rules`, each rule says PASS/FAIL/UNKNOWN, and each
failed expression says what was wanted and what the node has. Colour only when asked (a TTY).

Unknown is not absent: a name no probe provides (or, in NFD's view, a nodecompat addition) is
listed under "names no probe provides" / "hidden in NFD's view" after the answer, with a
did-you-mean, even when the expression naming it matched (a DoesNotExist over a misspelt name).
"""

from __future__ import annotations

from nodecompat.engine.verdict import (
    FACT_ABSENT,
    FACT_NFD_HIDDEN,
    FACT_UNSPECIFIED,
    ExpressionVerdict,
    RuleVerdict,
    SetVerdict,
    TermVerdict,
    Verdict,
)

_COLOURS = {"PASS": "\033[32m", "FAIL": "\033[31m", "UNKNOWN": "\033[33m", "bold": "\033[1m"}
_RESET = "\033[0m"


def _c(text: str, key: str, colour: bool) -> str:
    return f"{_COLOURS[key]}{text}{_RESET}" if colour else text


def _status(matched: bool, unknown: bool) -> str:
    return "PASS" if matched else ("UNKNOWN" if unknown else "FAIL")


def _expr_line(e: ExpressionVerdict) -> str:
    what = f"{e.feature}.{e.element}" if e.element else f"{e.feature} (name)"
    where = f" on {e.instance}" if e.instance else ""
    return f"{what}: {e.detail}{where}"


def _term_lines(t: TermVerdict, indent: str, colour: bool) -> list[str]:
    out = []
    for e in t.expressions:
        if e.matched:
            continue
        status = "UNKNOWN" if e.unknown else "FAIL"
        out.append(f"{indent}{_c(status, status, colour)} {_expr_line(e)}")
    if not t.matched and not out:
        why = (
            "feature not present on this node"
            if t.fact in (FACT_ABSENT, FACT_UNSPECIFIED)
            else "not provided by any probe" + (f" (did you mean {t.suggestion}?)" if t.suggestion else "")
        )
        out.append(f"{indent}{_c('FAIL', 'FAIL', colour)} {t.feature}: {why}")
    return out


def _rule_lines(r: RuleVerdict, colour: bool) -> list[str]:
    status = _status(r.matched, r.unknown)
    lines = [f"  {_c(status.ljust(7), status, colour)} rule {r.name or '(unnamed)'}"]
    if r.matched:
        return lines
    for t in r.match_features:
        lines.extend(_term_lines(t, "      ", colour))
    if r.match_any and not any(a.matched for a in r.match_any):
        lines.append("      none of the matchAny alternatives holds:")
        for i, a in enumerate(r.match_any, 1):
            lines.append(f"      alternative {i}:")
            for t in a.terms:
                lines.extend(_term_lines(t, "        ", colour))
    return lines


def render_set(s: SetVerdict, colour: bool = False) -> str:
    status = _status(s.passed, s.unknown)
    head = f"SET #{s.index + 1}"
    if s.description:
        head += f" {s.description}"
    meta = [f"weight {s.weight}"]
    if s.tag:
        meta.insert(0, f"tag {s.tag}")
    header = (
        f"{_c(head, 'bold', colour)} ({', '.join(meta)}): {_c(status, status, colour)} "
        f"{s.rules_matched}/{s.rules_total} rules"
    )
    return "\n".join([header, *(line for r in s.rules for line in _rule_lines(r, colour))])


def render_table(verdict: Verdict, colour: bool = False) -> str:
    """The whole verdict: every evaluated set, then the overall answer, unknown facts and warnings."""
    parts = [render_set(s, colour) for s in verdict.sets]
    if not verdict.sets:
        parts.append("no compatibility set was evaluated")
    answer = "COMPATIBLE" if verdict.compatible else "NOT COMPATIBLE"
    key = "PASS" if verdict.compatible else ("UNKNOWN" if any(s.unknown for s in verdict.sets) else "FAIL")
    summary = f"{_c(answer, key, colour)} (score {verdict.score})"
    if verdict.nfd_view:
        summary += " in NFD's view (nodecompat's additions hidden)"
    tail = [summary]
    if verdict.node_name:
        tail.append(f"node: {verdict.node_name}")
    if verdict.image:
        tail.append(f"image: {verdict.image} ({verdict.image_digest})")
        tail.append(f"spec artifact: {verdict.artifact_digest}")
    if verdict.unknown_facts:
        tail.append("unknown facts:")
        tail.extend(f"  {u}" for u in verdict.unknown_facts)
    unprovided = [u for u in verdict.unseen_names if u.fact != FACT_NFD_HIDDEN]
    hidden = [u for u in verdict.unseen_names if u.fact == FACT_NFD_HIDDEN]
    if unprovided:
        tail.append("names no probe provides (counted as absent, as NFD does):")
        tail.extend(f"  {u.message}" for u in unprovided)
    if hidden:
        tail.append("hidden in NFD's view (NFD does not publish them):")
        tail.extend(f"  {u.message}" for u in hidden)
    if verdict.warnings:
        tail.append("warnings:")
        tail.extend(f"  {w}" for w in verdict.warnings)
    return "\n\n".join(parts) + "\n\n" + "\n".join(tail) + "\n"
