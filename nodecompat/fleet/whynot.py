"""Why not, counted: per compatibility set, every expression, term and rule that failed on at least one
node, with the number of nodes it excluded, and how many nodes' outcome hinged on unknown facts.

Computed from verdicts only (dataclass or ValidationReport form, same field names), so the counts are
exact: a node counts once for an item when that item failed in a set the node did not pass. A matchAny
alternative's terms count only when no alternative held (otherwise they excluded nobody). Verdicts can
be given once per distinct feature set with the number of nodes sharing it (`weight`), which is how the
inventory counts 10,000 nodes from 20 evaluations. Ordering of the output: most nodes first, then
position in the spec. In the spirit of Nomad's constraint-filtered counts ("excluded N of M nodes").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KIND_ORDER = {"expression": 0, "term": 1, "rule": 2}


@dataclass
class Exclusion:
    kind: str = ""  # "expression", "term" or "rule"
    path: str = ""
    text: str = ""
    nodes: int = 0


@dataclass
class SetExclusions:
    index: int = 0
    description: str = ""
    tag: str = ""
    nodes_passed: int = 0
    nodes_failed: int = 0
    exclusions: list[Exclusion] = field(default_factory=list)
    nodes_unknown: int = 0


def expression_text(e: Any) -> str:
    """"pci.device vendor In [10de]" / "kernel.loadedmodule name InRegexp [^nv]" / "cpu.model family Exists"."""
    element = e.element if e.element else "name"
    values = f" [{', '.join(e.values)}]" if list(e.values) else ""
    typ = f" ({e.type})" if e.type else ""
    return f"{e.feature} {element} {e.op}{values}{typ}"


def _term_items(term: Any, path: str) -> Iterable[tuple[str, str, str, bool]]:
    """(kind, path, text, unknown) for a failed term and each of its failed expressions."""
    if term.matched:
        return
    tpath = f"{path} {term.feature}"
    failed = [e for e in term.expressions if not e.matched]
    for e in failed:
        yield "expression", tpath, expression_text(e), bool(e.unknown)
    text = term.feature if term.feature_present or term.unknown else f"{term.feature} (feature not present)"
    yield "term", tpath, text, bool(term.unknown)


def failed_items(set_verdict: Any) -> tuple[set[tuple[str, str, str]], bool]:
    """The (kind, path, text) items that failed in one set of one node, and whether any was unknown."""
    items: set[tuple[str, str, str]] = set()
    unknown = bool(set_verdict.unknown)
    for ri, rule in enumerate(set_verdict.rules):
        if rule.matched:
            continue
        rpath = f"rules[{ri}]" + (f" {rule.name}" if rule.name else "")
        items.add(("rule", rpath, rule.name or f"rules[{ri}]"))
        unknown = unknown or bool(rule.unknown)
        for ti, term in enumerate(rule.match_features):
            for kind, p, text, unk in _term_items(term, f"{rpath}: matchFeatures[{ti}]"):
                items.add((kind, p, text))
                unknown = unknown or unk
        if rule.match_any and not any(a.matched for a in rule.match_any):
            for ai, alt in enumerate(rule.match_any):
                for ti, term in enumerate(alt.terms):
                    for kind, p, text, unk in _term_items(term, f"{rpath}: matchAny[{ai}].matchFeatures[{ti}]"):
                        items.add((kind, p, text))
                        unknown = unknown or unk
    return items, unknown


def count(verdicts: Iterable[tuple[Any, int]]) -> list[SetExclusions]:
    """Counts over (verdict, weight) pairs: `verdict` has `.sets`; `weight` is how many nodes share it.

    Returns one SetExclusions per set index seen, in index order."""
    sets: dict[int, SetExclusions] = {}
    counts: dict[int, dict[tuple[str, str, str], int]] = {}
    for verdict, weight in verdicts:
        if weight <= 0:
            continue
        for sv in verdict.sets:
            se = sets.get(sv.index)
            if se is None:
                se = sets[sv.index] = SetExclusions(index=sv.index, description=sv.description, tag=sv.tag)
                counts[sv.index] = {}
            if sv.passed:
                se.nodes_passed += weight
                continue
            se.nodes_failed += weight
            items, unknown = failed_items(sv)
            if unknown:
                se.nodes_unknown += weight
            c = counts[sv.index]
            for item in items:
                c[item] = c.get(item, 0) + weight
    out = []
    for idx in sorted(sets):
        se = sets[idx]
        se.exclusions = [
            Exclusion(kind=k, path=p, text=t, nodes=n)
            for (k, p, t), n in sorted(counts[idx].items(), key=lambda kv: (-kv[1], kv[0][1], KIND_ORDER[kv[0][0]]))
        ]
        out.append(se)
    return out


def summary_lines(sets: Iterable[Any], limit: int = 5) -> list[str]:
    """"set #1 gpu: 812 nodes excluded by pci.device vendor In [10de]; 9 by kernel.loadedmodule nvidia Exists".

    Names the most specific items (expressions; a term or rule only where no expression of it failed),
    at most `limit` per set. Accepts SetExclusions dataclasses or messages."""
    lines = []
    for se in sets:
        if not se.nodes_failed:
            continue
        label = f"set #{se.index + 1}" + (f" {se.description or se.tag}" if (se.description or se.tag) else "")
        covered = {e.path for e in se.exclusions if e.kind == "expression"}
        rule_paths_with_terms = {e.path.split(":")[0] for e in se.exclusions if e.kind in ("expression", "term")}
        chosen = [
            e
            for e in se.exclusions
            if e.kind == "expression"
            or (e.kind == "term" and e.path not in covered)
            or (e.kind == "rule" and e.path not in rule_paths_with_terms)
        ]
        parts = []
        for i, e in enumerate(chosen[:limit]):
            noun = " nodes excluded by " if i == 0 else " by "
            if i == 0 and e.nodes == 1:
                noun = " node excluded by "
            parts.append(f"{e.nodes}{noun}{e.text}")
        if len(chosen) > limit:
            parts.append(f"and {len(chosen) - limit} more")
        extra = f" ({se.nodes_unknown} with unknown facts)" if se.nodes_unknown else ""
        lines.append(f"{label}: " + "; ".join(parts) + extra)
    return lines
