"""Where a runner's first probe round goes, part by part, against the bare reads: bench_probes.py --first-split
(issue 11, row (a)).

Figures only; nothing is asserted. Each figure is the median process CPU time (the worker thread included)
of `runs` rounds, the kinds alternating run by run so a neighbour's load on the shared machine weighs on all
alike, `repeats` times; the parts are differences of these, as ratios of the bare reads of the same run:
- bare: the round's host operations done the cheapest way (bench_probes.replay);
- first: a runner's first round (bench_probes._first_round: new instances, a new memoizing runner, its calls
  on this thread as the daemon runs its first round: ProbeRunner.run_here);
- recorded: the same probes' discover() one after another on this thread, each memoizable one on its own
  recording view of one round host (probes/probe_memo.py), its log finished (memo_replay.finish): the first
  round's work without the runner;
- plain: the same without recording (a round host, no log);
- own: the same with every read served from a round memo filled beforehand (the probes' own Python and
  the memo look-ups).
Parts: probes' own Python = own; host-read layer (reads included) = plain - own; memo recording =
recorded - plain; runner (statuses, merge, entry points, watchdog) = first - recorded.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench_probes import _first_round, recorded_ops, replay

from nodecompat.hostroot import HostRoot
from nodecompat.probes.memo_replay import finish
from nodecompat.probes.probe_memo import RecordingHost, declared_memoizable
from nodecompat.probes.registry import load_probes
from nodecompat.probes.round_host import RoundHost


def first_split(label: str, root: Path, repeats: int, runs: int) -> None:
    """Print the first round's parts on `root` (see the module docstring)."""
    host = HostRoot(root)
    probes, _ = load_probes()
    ops = recorded_ops(root, probes)
    kinds = [type(p) for p in probes]

    def recorded() -> None:
        rh = RoundHost.over(host)
        for kind in kinds:
            probe = kind()
            if declared_memoizable(kind):
                view = RecordingHost.of(rh)
                finish(view.log, probe.discover(view))
            else:
                probe.discover(rh)

    def plain() -> None:
        rh = RoundHost.over(host)
        for kind in kinds:
            kind().discover(rh)

    filled = RoundHost.over(host)
    for kind in kinds:
        kind().discover(filled)
    reads = {k: v for k, v in filled.memo.items() if k[0] != "="}  # reads, not per-round derivations

    def own() -> None:
        rh = RoundHost.over(host)
        rh.memo.update(reads)
        for kind in kinds:
            kind().discover(rh)

    fns: dict[str, Callable[[], object]] = {"bare": lambda: replay(ops), "first": lambda: _first_round(host),
                                            "recorded": recorded, "plain": plain, "own": own}
    ratios: dict[str, list[float]] = {}
    for _ in range(repeats):
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(runs):
            for k, fn in fns.items():
                c0 = time.process_time_ns()
                fn()
                cpu[k].append(time.process_time_ns() - c0)
        med = {k: statistics.median(v) for k, v in cpu.items()}
        b = med["bare"]
        parts = {"first round": med["first"], "probes' own Python": med["own"],
                 "host-read layer (reads included)": med["plain"] - med["own"],
                 "memo recording": med["recorded"] - med["plain"], "runner": med["first"] - med["recorded"],
                 "bare reads (us)": b * 1000 / 1e6}  # fmt: skip
        for k, v in parts.items():
            ratios.setdefault(k, []).append(v if k.startswith("bare") else v / b)
    print(f"\n== {label}: a runner's first round, process CPU, median of {runs} runs, {repeats} times "
          f"(load average {os.getloadavg()[0]:.1f})")
    for k, v in ratios.items():
        unit = "us" if k.startswith("bare") else "x bare"
        print(f"  {k:<34} {statistics.median(v):8.2f} {unit}  (min {min(v):.2f}, max {max(v):.2f})")
