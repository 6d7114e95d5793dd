"""What-if: every image/spec against every node (a features snapshot or a fleet node), as a matrix.

The pre-migration check ("which of my images break on the planned RHEL 10 hosts?"): rows are specs,
columns nodes, each cell compatible or not with the first reason. A row "fits" when some node is
compatible; the answer is yes only when every row fits somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import Spec
from nodecompat.features import Features
from nodecompat.fleet.reasons import failure_reasons

MAX_WHATIF_SPECS = 64
MAX_WHATIF_NODES = 10_000


@dataclass
class Cell:
    node_name: str = ""
    compatible: bool = False
    score: int = 0
    reason: str = ""
    status: str = "OK"


@dataclass
class Row:
    name: str = ""
    image_digest: str = ""
    artifact_digest: str = ""
    error: str = ""
    cells: list[Cell] = field(default_factory=list)
    fits: int = 0


@dataclass
class Node:
    name: str
    features: Features
    unknown: Mapping[str, str] = field(default_factory=dict)


def cell_from_verdict(node_name: str, verdict: Any) -> Cell:
    """A cell from a verdict (dataclass or ValidationReport-shaped plus compatible/score)."""
    reasons = [] if verdict.compatible else failure_reasons(verdict)
    return Cell(
        node_name=node_name,
        compatible=bool(verdict.compatible),
        score=int(verdict.score),
        reason=reasons[0] if reasons else "",
    )


def matrix(specs: Sequence[tuple[str, Spec | str]], nodes: Sequence[Node], tags: Sequence[str] = ()) -> list[Row]:
    """One Row per (name, spec); a spec given as a string is an error text for that row (cells empty)."""
    rows = []
    for name, spec in specs:
        row = Row(name=name)
        if isinstance(spec, str):
            row.error = spec
            rows.append(row)
            continue
        for node in nodes:
            v = evaluate(spec, node.features, tags=list(tags), unknown=node.unknown)
            row.cells.append(cell_from_verdict(node.name, v))
        row.fits = sum(c.compatible for c in row.cells)
        rows.append(row)
    return rows


def all_fit(rows: Sequence[Row]) -> bool:
    """Every row without an error fits on at least one node."""
    return all(r.fits > 0 for r in rows if not r.error)


def render_matrix(rows: Sequence[Row]) -> str:
    """A table: one line per spec, one column per node (OK / NO / status), then the first reasons."""
    nodes = [c.node_name for c in rows[0].cells] if rows and rows[0].cells else []
    for r in rows:
        if r.cells:
            nodes = [c.node_name for c in r.cells]
            break
    name_w = max([len("IMAGE/SPEC"), *(len(r.name) for r in rows)])
    widths = [max(len(n), 3) for n in nodes]
    lines = ["  ".join(["IMAGE/SPEC".ljust(name_w), *(n.ljust(w) for n, w in zip(nodes, widths, strict=True)), "FITS"])]
    notes: list[str] = []
    for r in rows:
        if r.error:
            lines.append(f"{r.name.ljust(name_w)}  error: {r.error}")
            continue
        marks = []
        for c, w in zip(r.cells, widths, strict=True):
            mark = ("OK" if c.compatible else "NO") if c.status == "OK" else c.status
            marks.append(mark.ljust(w))
            if not c.compatible and (c.reason or c.status != "OK"):
                notes.append(f"  {r.name} on {c.node_name}: {c.reason or c.status}")
        lines.append("  ".join([r.name.ljust(name_w), *marks, f"{r.fits}/{len(r.cells)}"]))
    if notes:
        lines.append("")
        lines.append("first reasons:")
        lines.extend(notes)
    return "\n".join(line.rstrip() for line in lines) + "\n"
