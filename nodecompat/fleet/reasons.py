"""Why a node is not compatible, as lines a person reads: one per failed expression of the best set.

Works on verdicts in either form — the core's dataclasses (nodecompat.engine.verdict) or the
ValidationReport message — since they carry the same field names; so the aggregator gives the same
reasons for an answer computed from its inventory as for one a daemon sent.
"""

from __future__ import annotations

from typing import Any


def failure_reasons(report: Any) -> list[str]:
    """One line per failed expression of the best failing set (most rules matched, weight, order).

    `report` has `.sets` (SetVerdict-shaped); [] when some set passed."""
    if any(s.passed for s in report.sets):
        return []
    if not report.sets:
        return ["no compatibility set was evaluated (do the --tags select any set?)"]
    best = max(
        report.sets,
        key=lambda s: (s.rules_matched / s.rules_total if s.rules_total else 0.0, s.weight, -s.index),
    )
    label = f"SET #{best.index + 1}" + (f" ({best.description})" if best.description else "")  # as `validate`
    lines: list[str] = []
    for rule in best.rules:
        if rule.matched:
            continue
        where = f"{label}, rule {rule.name or '?'}"
        for term in rule.match_features:
            lines.extend(f"{where}: {r}" for r in term_reasons(term))
        failed_any = [m for m in rule.match_any if not m.matched]
        if rule.match_any and len(failed_any) == len(rule.match_any):
            for i, alt in enumerate(rule.match_any):
                for term in alt.terms:
                    lines.extend(f"{where}, alternative {i + 1}: {r}" for r in term_reasons(term))
        if not any(line.startswith(where) for line in lines):
            lines.append(f"{where}: did not match" + (" (facts unknown)" if rule.unknown else ""))
    return lines


def term_reasons(term: Any) -> list[str]:
    """Lines for one TermVerdict-shaped term; [] when it matched."""
    if term.matched:
        return []
    out = []
    for e in term.expressions:
        if e.matched:
            continue
        what = f"{e.feature}.{e.element}" if e.element else f"{e.feature} (name)"  # as `validate` words it
        text = f"{what}: {e.detail}" if e.detail else f"{what} {e.op} {list(e.values)}, node has {list(e.actual)}"
        out.append(text + (" (unknown: the probe failed)" if e.unknown and "unknown" not in text else ""))
    if not out:
        out.append(
            f"{term.feature}: feature not present on the node"
            if not term.feature_present
            else f"{term.feature}: no element matched"
        )
    return out
