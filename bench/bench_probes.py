"""Probe cost against the floor: a full probe round vs. just reading the same host files.

For the real host (/) and the h100-server fixture tree this prints, as medians of N runs:
- the cold full round: new probe instances + probe_once(HostRoot(root)) (runner, spans, merge);
- a steady round: a long-lived ProbeRunner's round on an unchanged host (each memoizable probe's logged
  host operations replayed and compared, its last result reused: probes/probe_memo.py), run as the
  daemon's refresh loop runs it (daemon_round);
- each probe's discover() alone on a round's host, with new instances;
- the bare cost of the I/O: every host operation a round performs, recorded once on a round's own
  host (RecordingRoundHost: each file read, stat, directory listing and link read, once each, in
  the round's order, the files a tree lacks included), replayed on the resolved paths with the
  plain system-call wrappers: os.open (the round's flags) + os.pread to the end + os.close, os.stat,
  os.listdir, os.readlink; no parsing;
- once per root, a fresh interpreter doing the same round (imports included), for scale.
Figures only; nothing is asserted.

Until Dec 1 the bare reads were replayed from the paths HostRoot.resolve returned: a failed
lookup was never recorded (the ~90 files the h100 tree lacks cost the round and not the limit), a
link read was replayed as a listing of its directory, each path was stat'ed twice to find its kind
(os.path.islink, os.path.isdir) and files were read through Python's buffered open() (fstat, ioctl,
lseek, two reads): a limit ~2.2x the cost of the same reads done bare, i.e. unfair in our favour.

--rows prints the table's two rows against the bare reads: (a) a runner's first round, (b) a steady
round (see rows()).

--detail prints where a steady round's time goes, per operation (bench/probe_detail.py); --first-split where
a runner's first round goes, part by part (bench/probe_first_split.py).

Usage: .venv/bin/python bench/bench_probes.py [--runs N] [--no-subprocess] [--rows [--repeats N]] [--detail]
       [--first-split [--repeats N]]
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
from typing import Any

from nodecompat.hostroot import MAX_READ_BYTES, HostRoot
from nodecompat.probes.base import Probe
from nodecompat.probes.registry import load_probes
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.runner import ProbeRunner, probe_once

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "hosts" / "h100-server"


@dataclass(frozen=True)
class RecordingRoundHost(RoundHost):
    """A probe round's host that notes every host operation the round performs: (op, host path) once
    each, in order, with op "read" (a file's contents), "stat", "list" (a directory's names) or
    "link" (a link's target read; host_resolve of a device link too)."""

    ops: dict[tuple[str, str], None] = field(default_factory=dict, compare=False)

    def c_reader(self) -> list[Any]:
        """No reads in C: each goes through _read, which notes it."""
        if not self._cr:
            self._cr.append(None)
        return self._cr

    def _note(self, op: str, host_path: str | os.PathLike[str]) -> None:
        self.ops.setdefault((op, os.fspath(host_path)), None)

    def _read(self, text: str, within: str | None) -> bytes | None:
        self._note("read", text)
        return super()._read(text, within)

    def open_bytes(self, host_path: str | os.PathLike[str], *, within: str | None = None,
                   max_bytes: int = MAX_READ_BYTES) -> bytes:
        self._note("read", host_path)
        return super().open_bytes(host_path, within=within, max_bytes=max_bytes)

    def stat_or_none(self, text: str) -> os.stat_result | None:
        self._note("stat", text)
        return super().stat_or_none(text)

    def stat(self, host_path: str | os.PathLike[str], *, within: str | None = None) -> os.stat_result:
        self._note("stat", host_path)
        return super().stat(host_path, within=within)

    def listdir(self, host_path: str | os.PathLike[str]) -> list[str]:
        self._note("list", host_path)
        return super().listdir(host_path)

    def _link_target_name(self, text: str) -> str | None:
        self._note("link", text)
        return super()._link_target_name(text)

    def host_resolve(self, host_path: str | os.PathLike[str], *, strict: bool = False) -> str:
        self._note("link", host_path)
        return super().host_resolve(host_path, strict=strict)


Op = tuple[str, str]  # (op, path on this machine)


def recorded_ops(root: Path, probes: list[Probe]) -> list[Op]:
    """The host operations of one round of `probes` (new instances) on `root`, with each host path
    resolved inside the root to the path on this machine (a link: its directory resolved, its name
    kept; a missing file: resolved as far as it goes). Run after a first round, as the bench's
    rounds are: what a round keeps between rounds (the kernel config's parse) is not read again."""
    host = HostRoot(root)
    probe_once(host)
    rec = RecordingRoundHost.over(host)
    for p in probes:
        type(p)().discover(rec)
    out: list[Op] = []
    for op, text in rec.ops:
        if op == "link":
            parent, _, name = text.rstrip("/").rpartition("/")
            out.append((op, os.path.join(host.resolve(parent or "/"), name)))
        else:
            out.append((op, str(host.resolve(text))))
    return list(dict.fromkeys(out))


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # the round's (hostroot._OPEN_FLAGS)


def replay(ops: list[Op]) -> None:
    """Do each recorded operation the cheapest way: open/read to the end/close, stat, listdir,
    readlink; no parsing; a failure (a file the tree lacks) ignored. A file is read as the round reads
    it (round_host.py): a page at offset 0, then one byte to find the end, then 64 KiB chunks. Reading
    64 KiB at a time, as this did until Dec 1, cost ~12 us more per /proc/sys file (the kernel zero-fills
    a buffer of the size asked), so the limit would be above the cheapest way once the round read less."""
    for op, p in ops:
        try:
            if op == "read":
                fd = os.open(p, _READ_FLAGS)
                try:
                    n = len(os.pread(fd, 4096, 0))
                    if n == 4096 or (n and os.pread(fd, 1, n)):
                        while chunk := os.pread(fd, 1 << 16, n):
                            n += len(chunk)
                finally:
                    os.close(fd)
            elif op == "stat":
                os.stat(p)
            elif op == "list":
                os.listdir(p)
            else:
                os.readlink(p)
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


def _run_closed(probes: list[Probe], host: HostRoot) -> None:
    runner = ProbeRunner(probes, host)  # memoizing, as the daemon's: its one round logs for a next one
    try:
        runner.run()
    finally:
        runner.close()


def _in_thread(names: list[str], factories: dict[str, type[Probe]], host: RoundHost) -> None:
    """New instances' discover() one after another on one round host, in this thread (no runner)."""
    for name in names:
        factories[name]().discover(host)


def bench_root(label: str, root: Path, runs: int, subprocess_runs: int) -> None:
    probes, errors = load_probes()
    if errors:
        print(f"  load errors: {errors}")
    names = sorted(p.name for p in probes)
    factories = {p.name: type(p) for p in probes}

    per_probe_ops = {name: recorded_ops(root, [factories[name]()]) for name in names}
    all_ops = recorded_ops(root, probes)

    host = HostRoot(root)
    full = median_ms(lambda: probe_once(host), runs)
    bare = median_ms(lambda: replay(all_ops), runs)
    load = median_ms(load_probes, runs)
    warm = median_ms(lambda: _run_closed([factories[n]() for n in names], host), runs)
    long_lived = ProbeRunner(probes, host)
    loop_round = daemon_round(long_lived)
    loop_round()  # its first round logs what the steady rounds replay (probes/probe_memo.py)
    steady = median_ms(loop_round, runs)
    long_lived.close()
    inline = median_ms(lambda: _in_thread(names, factories, RoundHost.over(host)), runs)
    memo_host = RoundHost.over(host)
    _in_thread(names, factories, memo_host)
    memo = {k: v for k, v in memo_host.memo.items() if k[0] != "="}  # reads, not per-round derivations

    def served() -> None:
        rh = RoundHost.over(host)
        rh.memo.update(memo)
        _in_thread(names, factories, rh)

    own = median_ms(served, runs)
    print(f"\n== {label}: {root}  ({len(all_ops)} host operations, median of {runs} runs)")
    print(f"  full round  probe_once (new instances, runner)   {full:8.2f} ms")
    print(f"    of which  registry load_probes() (entry points) {load:8.2f} ms")
    print(f"    of which  ProbeRunner.run(), probes preloaded   {warm:8.2f} ms")
    print(f"  steady      a long-lived runner's round, unchanged {steady:7.2f} ms")
    print(f"  in thread   discover() one after another, no runner {inline:6.2f} ms")
    print(f"  own work    the same, memoized reads from memory  {own:8.2f} ms")
    print(f"  bare I/O    same operations, syscall wrappers    {bare:8.2f} ms")
    print(
        f"  overhead    round / bare                         {full / bare if bare else float('nan'):8.1f} x"
    )
    print(  # what a round would cost with no runner and an I/O layer as cheap as the bare reads
        f"  floor       (own work + bare) / bare             {(own + bare) / bare if bare else float('nan'):8.1f} x"
    )
    print(f"  {'probe':<10} {'discover ms':>12} {'bare I/O ms':>12} {'ops':>6}")
    for name in names:
        t = median_ms(functools.partial(lambda c: c().discover(RoundHost.over(host)), factories[name]), runs)
        b = median_ms(functools.partial(replay, per_probe_ops[name]), runs)
        print(f"  {name:<10} {t:12.3f} {b:12.3f} {len(per_probe_ops[name]):6d}")
    if subprocess_runs:
        fp = fresh_process_ms(root, subprocess_runs)
        print(f"  fresh interpreter: imports + first round, median of {subprocess_runs}: {fp:8.1f} ms")


def daemon_round(runner: ProbeRunner) -> Callable[[], object]:
    """One round of `runner` as the daemon's refresh loop runs it, on the calling thread: FeatureCache's
    round (server/node/feature_cache.py: ProbeRunner.run_here under the watchdog, no hand-off to a worker
    thread, then published to the cache and its waiters; no on_round consumer)."""
    from nodecompat.server.node.feature_cache import FeatureCache

    return FeatureCache(runner)._refresh_here


def _first_round(host: HostRoot) -> None:
    """A runner's first round as the daemon runs it: new probe instances (the entry-point list read once
    per process: registry._entry_points), a new runner, nothing to reuse (every memoizable probe's host
    operations logged for the next round), its calls run on the calling thread under the watchdog
    (ProbeRunner.run_here: the forked first-round child's, server/node/first_round.py, and the refresh
    loop's when there is no child). Until Dec 2 it was ProbeRunner.run() (the calls handed to a worker
    thread), which probe_once (the CLI) and a caller's refresh still use."""
    runner = ProbeRunner(load_probes()[0], host)
    try:
        runner.run_here(_never)
    finally:
        runner.close()


def _never(_finish: object) -> None:
    """on_hang of the bench's rounds: a call of the bench never hangs (the round would be lost)."""
    raise RuntimeError("a probe hung in the bench")


def rows(label: str, root: Path, repeats: int, runs: int) -> list[str]:
    """The table's two rows against the bare reads of the same files, `repeats` times (each the median
    of `runs`; the first round, a steady round and the bare reads alternating run by run):
    (a) a runner's first round (new probe instances, a new ProbeRunner: no memo, its calls on the calling
    thread as the daemon's first round; _first_round);
    (b) a steady round of a long-lived runner on an unchanged host: each memoizable probe's logged host
    operations are replayed (every file read again, compared), discover() only where an answer
    changed or the probe is not memoizable (probes/probe_memo.py) - the daemon's cost per round, run
    as the daemon's refresh loop runs it (daemon_round: FeatureCache's round on the calling thread,
    ProbeRunner.run_here under the watchdog, then published).
    Ratios of wall times; beside them the same ratios in process CPU time, which a loaded machine
    distorts less (a 4 ms round is preempted more often than a 1.5 ms replay, and waits a time slice
    each time: at load ~17 on the 2 cores, wall ratios of 6-14 were seen where the CPU ratio was ~3)."""
    probes, _ = load_probes()
    all_ops = recorded_ops(root, probes)
    host = HostRoot(root)
    steady = ProbeRunner(load_probes()[0], host)
    loop_round = daemon_round(steady)
    loop_round()  # its first round: the memo the steady rounds replay
    kinds = ("first", "steady", "bare")
    fns = {"first": lambda: _first_round(host), "steady": loop_round, "bare": lambda: replay(all_ops)}
    med: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}  # process CPU time (all threads)
    try:
        for _ in range(repeats):
            # Alternate run by run, so a neighbour's load on the shared machine weighs on all alike.
            wall: dict[str, list[float]] = {k: [] for k in kinds}
            used: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(runs):
                for k in kinds:
                    c0, t0 = time.process_time(), time.perf_counter()
                    fns[k]()
                    wall[k].append((time.perf_counter() - t0) * 1000)
                    used[k].append((time.process_time() - c0) * 1000)
            for k in kinds:
                med[k].append(statistics.median(wall[k]))
                cpu[k].append(statistics.median(used[k]))
    finally:
        steady.close()
    lim = med["bare"]
    out = []
    for k, what in (
        ("first", "(a) first probe round of a runner (new probe instances, no memo)"),
        ("steady", "(b) steady probe round of a long-lived runner, unchanged host (reads replayed)"),
    ):
        fig = med[k]
        ratios = [f / b for f, b in zip(fig, lim, strict=True)]
        cr = [f / b for f, b in zip(cpu[k], cpu["bare"], strict=True)]
        m = statistics.median(ratios)
        out.append(
            f"ROW {what} / bare reads of the same files, {label} | {statistics.median(fig):.2f} ms "
            f"(min {min(fig):.2f}, max {max(fig):.2f}) | bare reads {statistics.median(lim):.2f} ms "
            f"(min {min(lim):.2f}, max {max(lim):.2f}), {len(all_ops)} host operations | ratio {m:.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f}; in process CPU time {statistics.median(cr):.2f}, "
            f"min {min(cr):.2f}, max {max(cr):.2f}) | target <= 1.5 | {'met' if m <= 1.5 else 'NOT MET'}"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="probe round cost vs bare file reads")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--subprocess-runs", type=int, default=3)
    parser.add_argument("--no-subprocess", action="store_true")
    parser.add_argument("--rows", action="store_true", help="only the table's rows (median of --repeats)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--detail", action="store_true", help="where a steady round's time goes, per operation")
    parser.add_argument("--first-split", action="store_true", help="where a runner's first round goes, by part")
    args = parser.parse_args()
    if args.first_split:
        from probe_first_split import first_split  # bench/probe_first_split.py, beside this file

        for label, root in (("this machine (/)", Path("/")), ("fixture h100-server", FIXTURE)):
            first_split(label, root, args.repeats, args.runs)
        return 0
    if args.detail:
        from probe_detail import detail  # bench/probe_detail.py, beside this file

        for label, root in (("this machine (/)", Path("/")), ("fixture h100-server", FIXTURE)):
            detail(label, root, max(args.runs, 300))
        return 0
    if args.rows:
        for label, root in (("this machine (/)", Path("/")), ("fixture h100-server", FIXTURE)):
            print("\n".join(rows(label, root, args.repeats, args.runs)))
        return 0
    sp = 0 if args.no_subprocess else args.subprocess_runs
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bench_root("real host", Path("/"), args.runs, sp)
    bench_root("fixture h100-server", FIXTURE, args.runs, sp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
