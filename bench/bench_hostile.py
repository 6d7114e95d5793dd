"""Hostile specs: how long each takes to be refused, or parsed and evaluated. Prints figures; asserts nothing.

Cases: a 10 MiB spec, 10,000-deep nesting (YAML lists, YAML maps, JSON), billion laughs, `(a+)+$`
against a 100 KB value, the reviewer's 1 MiB worst case (~6,200 two-expression pci.device rules),
and the costliest specs the complexity caps accept (nodecompat/engine/limits.py) evaluated against 200
PCI devices. tests/test_hostile.py asserts the behaviour of the same cases.
Run: .venv/bin/python bench/bench_hostile.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support_specs import (
    at_the_caps_spec,
    billion_laughs_spec,
    catastrophic_regex_case,
    deep_nesting_specs,
    one_mib_spec,
    pci_node,
    ten_mib_spec,
)

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import SpecError, parse_spec


def _best(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, float]:
    """(result or SpecError, best wall time of `repeat` runs in seconds)."""
    best = float("inf")
    out: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            out = fn()
        except SpecError as exc:
            out = exc
        best = min(best, time.perf_counter() - t0)
    return out, best


def _outcome(out: Any) -> str:
    return f"refused ({out.problems[0][:70]})" if isinstance(out, SpecError) else "accepted"


def main() -> None:
    rows: list[tuple[str, str, float, float | None, str]] = []
    cases: dict[str, str] = {"10 MiB": ten_mib_spec()}
    cases.update({f"10,000-deep {k}": v for k, v in deep_nesting_specs().items()})
    cases["billion laughs"] = billion_laughs_spec()
    cases["1 MiB worst case (reviewer)"] = one_mib_spec()
    for name, text in cases.items():
        out, dt = _best(lambda t=text: parse_spec(t))  # type: ignore[misc]
        rows.append((name, f"{len(text):,}", dt, None, _outcome(out)))

    spec_text, features = catastrophic_regex_case()
    spec = parse_spec(spec_text)
    v, dt_eval = _best(lambda: evaluate(spec, features))
    rows.append(("(a+)+$ on 100 KB", f"{len(spec_text):,}", 0.0, dt_eval, f"compatible={v.compatible}"))

    node = pci_node(200)
    for kind in ("in", "gt", "regex", "name"):
        text = at_the_caps_spec(kind)
        spec, dt_parse = _best(lambda t=text: parse_spec(t))  # type: ignore[misc]
        v, dt_eval = _best(lambda s=spec: evaluate(s, node))  # type: ignore[misc]
        label = f"at the caps: {kind} x 200 devices"
        rows.append((label, f"{len(text):,}", dt_parse, dt_eval, f"compatible={v.compatible}"))

    print(f"{'case':40} {'bytes':>12} {'parse/refuse':>13} {'evaluate':>10}  outcome")
    for name, size, dp, de, what in rows:
        ev = f"{de * 1000:8.1f}ms" if de is not None else f"{'-':>10}"
        print(f"{name:40} {size:>12} {dp * 1000:11.1f}ms {ev}  {what}")


if __name__ == "__main__":
    main()
