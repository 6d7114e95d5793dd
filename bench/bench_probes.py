"""Probe cost against the floor: a full probe round vs. just reading the same host files.

For the real host (/) and the h100-server fixture tree this prints, as medians of N runs:
- the cold full round: new probe instances + probe_once(HostRoot(root)) (threads, spans, merge);
- each probe's discover() alone, with new instances;
- the bare cost of the I/O: every path the probes touched (recorded on a first run through a
  recording HostRoot) replayed with plain os.listdir / os.readlink / open().read(), no parsing;
- once per root, a fresh interpreter doing the same round (imports included), for scale.
Figures only; nothing is asserted.

Usage: .venv/bin/python bench/bench_probes.py [--runs N] [--no-subprocess]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nodecompat.hostroot import HostRoot
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner, probe_once

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "hosts" / "h100-server"


@dataclass(frozen=True)
class RecordingHostRoot(HostRoot):
    """A HostRoot that remembers every host path a probe asked for (in order, once each)."""

    seen: dict[str, None] = field(default_factory=dict, compare=False)

    def resolve(self, host_path: str | os.PathLike[str], *, within: str | None = None, strict: bool = False) -> Path:
        p = super().resolve(host_path, within=within, strict=strict)
        self.seen.setdefault(str(p), None)
        return p


def replay(paths: list[str]) -> None:
    """Touch every recorded path the cheapest way: list dirs, read links and files, no parsing."""
    for p in paths:
        try:
            if os.path.islink(p):
                os.readlink(p)
            if os.path.isdir(p):
                os.listdir(p)
            else:
                with open(p, "rb") as f:
                    f.read()
        except OSError:
            pass


def median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def fresh_process_ms(root: Path, runs: int) -> float:
    code = (
        "import sys,time; t=time.perf_counter(); from pathlib import Path; "
        "from nodecompat.hostroot import HostRoot; from nodecompat.probes.runner import probe_once; "
        f"r=probe_once(HostRoot(Path({str(root)!r}))); assert all(s.ok for s in r.statuses); "
        "print((time.perf_counter()-t)*1000)"
    )
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        samples.append(float(out.stdout.strip()))
    return statistics.median(samples)


def bench_root(label: str, root: Path, runs: int, subprocess_runs: int) -> None:
    probes, errors = load_probes()
    if errors:
        print(f"  load errors: {errors}")
    names = sorted(p.name for p in probes)
    factories = {p.name: type(p) for p in probes}

    per_probe_paths: dict[str, list[str]] = {}
    for name in names:
        rec = RecordingHostRoot(root)
        factories[name]().discover(rec)
        per_probe_paths[name] = list(rec.seen)
    all_paths = list(dict.fromkeys(p for ps in per_probe_paths.values() for p in ps))

    host = HostRoot(root)
    full = median_ms(lambda: probe_once(host), runs)
    bare = median_ms(lambda: replay(all_paths), runs)
    load = median_ms(load_probes, runs)
    warm = median_ms(lambda: ProbeRunner([factories[n]() for n in names], host).run(), runs)
    print(f"\n== {label}: {root}  ({len(all_paths)} paths touched, median of {runs} runs)")
    print(f"  full round  probe_once (new instances, threads)  {full:8.2f} ms")
    print(f"    of which  registry load_probes() (entry points) {load:8.2f} ms")
    print(f"    of which  ProbeRunner.run(), probes preloaded   {warm:8.2f} ms")
    print(f"  bare I/O    same paths, open/read/listdir only   {bare:8.2f} ms")
    print(
        f"  overhead    round / bare                         {full / bare if bare else float('nan'):8.1f} x"
    )
    print(f"  {'probe':<10} {'discover ms':>12} {'bare I/O ms':>12} {'paths':>6}")
    for name in names:
        t = median_ms(functools.partial(lambda c: c().discover(host), factories[name]), runs)
        b = median_ms(functools.partial(replay, per_probe_paths[name]), runs)
        print(f"  {name:<10} {t:12.3f} {b:12.3f} {len(per_probe_paths[name]):6d}")
    if subprocess_runs:
        fp = fresh_process_ms(root, subprocess_runs)
        print(f"  fresh interpreter: imports + first round, median of {subprocess_runs}: {fp:8.1f} ms")


def rows(label: str, root: Path, repeats: int, runs: int) -> str:
    """The table's row: a cold full round (new probe instances, a new runner: probe_once) / the bare
    reads of the same files, `repeats` times (each the median of `runs`, the two alternating run by run)."""
    probes, _ = load_probes()
    all_paths: list[str] = []
    for p in probes:
        rec = RecordingHostRoot(root)
        type(p)().discover(rec)
        all_paths.extend(rec.seen)
    all_paths = list(dict.fromkeys(all_paths))
    host = HostRoot(root)
    fig, lim = [], []
    for _ in range(repeats):
        # Round and bare reads alternate run by run, so a neighbour's load on the shared machine
        # weighs on both alike (before: a block of `runs` rounds, then a block of bare reads).
        f, b = [], []
        for _ in range(runs):
            f.append(median_ms(lambda: probe_once(host), 1))
            b.append(median_ms(lambda: replay(all_paths), 1))
        fig.append(statistics.median(f))
        lim.append(statistics.median(b))
    ratios = [f / b for f, b in zip(fig, lim, strict=True)]
    med = statistics.median(ratios)
    return (
        f"ROW cold full probe round / bare reads of the same files, {label} | {statistics.median(fig):.2f} ms "
        f"(min {min(fig):.2f}, max {max(fig):.2f}) | bare reads {statistics.median(lim):.2f} ms "
        f"(min {min(lim):.2f}, max {max(lim):.2f}), {len(all_paths)} paths | ratio {med:.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) | target <= 1.5 | {'met' if med <= 1.5 else 'NOT MET'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="probe round cost vs bare file reads")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--subprocess-runs", type=int, default=3)
    parser.add_argument("--no-subprocess", action="store_true")
    parser.add_argument("--rows", action="store_true", help="only the table's rows (median of --repeats)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rows:
        print(rows("this machine (/)", Path("/"), args.repeats, args.runs))
        print(rows("fixture h100-server", FIXTURE, args.repeats, args.runs))
        return 0
    sp = 0 if args.no_subprocess else args.subprocess_runs
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bench_root("real host", Path("/"), args.runs, sp)
    bench_root("fixture h100-server", FIXTURE, args.runs, sp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
