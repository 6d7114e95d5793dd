"""Every probe's facts on every fixture host and on this machine, to prove a change to the probes kept them.

Dumps, per root (tests/fixtures/hosts/* and /): probe_once's features (NFD's JSON) and statuses (name, ok,
error, notes, declared features, timed_out); a memoizing ProbeRunner's first and second round (features,
statuses with `reused`); and each probe's discover() alone on a plain HostRoot (features and notes). Usage
values (nodecompat/fleet/volatile.py: free memory, free huge pages) are left out, as they move between runs
on a live host, and so is on / whether a probe was reused; durations are left out. Run it on the code
before a change and after, then compare:

    .venv/bin/python bench/probe_facts.py --out /tmp/before.json     # on the base commit
    .venv/bin/python bench/probe_facts.py --out /tmp/after.json      # with the change
    .venv/bin/python bench/probe_facts.py --compare /tmp/before.json /tmp/after.json

--compare prints every difference (root, part, path) and exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nodecompat.features import Features
from nodecompat.fleet.volatile import strip_volatile
from nodecompat.hostroot import HostRoot
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner, probe_once

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hosts"


def _features(f: Features) -> dict[str, Any]:
    return strip_volatile(f).to_nfd()


def _round(r: ProbeRound, live: bool = False) -> dict[str, Any]:
    """`live`: this machine, whose usage values move between rounds, so whether a probe reading one was
    reused (memory, hugepages) is no fact to compare."""
    return {
        "features": _features(r.features),
        "statuses": {
            s.name: {"ok": s.ok, "error": s.error, "notes": s.notes, "features": s.features,
                     "timed_out": s.timed_out, **({} if live else {"reused": s.reused})}
            for s in r.statuses
        },
    }


def facts(root: Path) -> dict[str, Any]:
    """The facts of `root` (see the module docstring)."""
    host = HostRoot(root)
    live = root == Path("/")
    out: dict[str, Any] = {"probe_once": _round(probe_once(host))}
    probes, _ = load_probes()
    runner = ProbeRunner(probes, host)
    try:
        out["runner_round_1"] = _round(runner.run(), live)
        out["runner_round_2"] = _round(runner.run(), live)
    finally:
        runner.close()
    alone: dict[str, Any] = {}
    for p in probes:
        try:
            o = type(p)().discover(HostRoot(root))
            alone[p.name] = {"features": _features(o.features), "notes": o.notes}
        except Exception as exc:  # a probe's failure is a fact to compare too
            alone[p.name] = {"raised": f"{type(exc).__name__}: {exc}"}
    out["discover_alone"] = alone
    return out


def roots() -> list[Path]:
    return [*sorted(p for p in FIXTURES.iterdir() if p.is_dir()), Path("/")]


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(a.keys() | b.keys(), key=str):
            if k not in a:
                out.append(f"{path}/{k}: only after: {json.dumps(b[k])[:200]}")
            elif k not in b:
                out.append(f"{path}/{k}: only before: {json.dumps(a[k])[:200]}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif a != b:
        out.append(f"{path}: before {json.dumps(a)[:200]} after {json.dumps(b)[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description="every probe's facts on every fixture host and on /")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        diffs: list[str] = []
        _diff(before, after, "", diffs)
        print("\n".join(diffs) if diffs else f"no difference ({len(before)} roots)")
        return 1 if diffs else 0
    data = {str(r): facts(r) for r in roots()}
    text = json.dumps(data, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text)
        print(f"{len(data)} roots -> {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
