"""Where a steady probe round's time goes, per operation: bench_probes.py --detail (issue 11).

Figures only; nothing is asserted. Run through bench/bench_probes.py --detail.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench_probes import daemon_round, recorded_ops, replay

from nodecompat.hostroot import HostRoot
from nodecompat.probes.registry import load_probes
from nodecompat.probes.round_host import RoundHost
from nodecompat.probes.runner import ProbeRunner

# the C helper's calls (probes/_hostc.c)
_C_CALLS = ("replay_reads", "stat_fields", "listdir", "link_name", "open_text", "openat2", "read_whole")
_SYSCALLS = (("open", "open"), ("pread", "read"), ("read", "read"), ("close", "close"), ("stat", "stat"),
             ("fstat", "stat"), ("lstat", "stat"), ("listdir", "listdir"), ("readlink", "readlink"))


def detail(label: str, root: Path, rounds: int) -> None:
    """Where a steady round's time goes (--detail): a long-lived runner's round (as the daemon's refresh loop
    runs it: bench_probes.daemon_round), the probes' replays alone
    (on this thread, the round's hold hint), and within the replays each system call wrapper's time and
    count (os.open/pread/close/stat/listdir/readlink, openat2 through ctypes), the answers' comparisons
    (timed apart: each answer against an equal copy) and the rest (bookkeeping: the loops, the memo's
    look-ups, path handling, frames), per round, against the bare reads of the same files. With the C
    helper built (probes/host_c.py) its calls are timed as a whole ("C replay_reads": a probe's reads
    opened, read, compared and put in the round's memo, all in C). The wrappers
    add their own cost (subtracted). Wall times, the least of 5 passes of rounds/5 rounds each per figure
    (a loaded machine's preemption mostly left out). Figures only."""
    from nodecompat.probes import host_c, root_resolve
    from nodecompat.probes.memo_replay import replays

    probes, _ = load_probes()
    ops = recorded_ops(root, probes)
    host = HostRoot(root)
    runner = ProbeRunner(load_probes()[0], host)
    loop_round = daemon_round(runner)  # as the daemon's refresh loop runs it
    loop_round()
    loop_round()
    memos = [m for _p, m in runner._memo.values()]

    def replayed() -> None:
        rh = RoundHost.over(host, runner._hold_hint)
        for m in memos:
            replays(m, rh)

    def cpu_us(fn: Callable[[], object]) -> float:
        samples = []
        for _ in range(rounds):
            c0 = time.process_time_ns()
            fn()
            samples.append((time.process_time_ns() - c0) / 1000)
        return statistics.median(samples)

    bare, run, rep = cpu_us(lambda: replay(ops)), cpu_us(loop_round), cpu_us(replayed)
    spent: dict[str, int] = {}
    count: dict[str, int] = {}

    def timed(fn: Callable[..., object], kind: str) -> Callable[..., object]:
        def wrapper(*a: object, **k: object) -> object:
            t0 = time.perf_counter_ns()
            try:
                return fn(*a, **k)
            finally:
                spent[kind] = spent.get(kind, 0) + time.perf_counter_ns() - t0
                count[kind] = count.get(kind, 0) + 1

        return wrapper

    saved = {name: getattr(os, name) for name, _ in _SYSCALLS}
    state = root_resolve._openat2_state[0] if root_resolve._openat2_state else None
    c = host_c.module()  # the C helper: its calls timed as a whole (system calls and comparisons inside)
    c_saved = {name: getattr(c, name) for name in _C_CALLS} if c is not None else {}
    try:
        for name, kind in _SYSCALLS:
            setattr(os, name, timed(saved[name], kind))
        for name, fn in c_saved.items():
            setattr(c, name, timed(fn, f"C {name}"))
        if state is not None and c is None:
            def opener(fd: int, flags: int) -> object:
                return timed(state.opener(fd, flags), "openat2 (ctypes)")

            wrapped = timed(state, "openat2 (ctypes)")
            wrapped.opener = opener  # type: ignore[attr-defined]
            root_resolve._openat2_state[0] = wrapped
        per_pass, best, best_spent, best_count = max(1, rounds // 5), float("inf"), {}, {}
        for _ in range(5):
            spent.clear()
            count.clear()
            t0 = time.perf_counter_ns()
            for _ in range(per_pass):
                replayed()
            took = (time.perf_counter_ns() - t0) / 1000 / per_pass
            if took < best:
                best, best_spent, best_count = took, dict(spent), dict(count)
        wrapped_us, rounds = best, per_pass
        spent.clear()
        spent.update(best_spent)
        count.clear()
        count.update(best_count)
    finally:
        for name, fn in saved.items():
            setattr(os, name, fn)
        for name, fn in c_saved.items():
            setattr(c, name, fn)
        if state is not None:
            root_resolve._openat2_state[0] = state
    nop = timed(lambda: None, "x")
    t0 = time.perf_counter_ns()
    for _ in range(100_000):
        nop()
    per_wrap = (time.perf_counter_ns() - t0) / 100_000 / 1000
    answers = [a for m in memos for _k, _p, _n, a in m.reads] + [e[2] for m in memos for e in m.others]
    copies = [bytes(a) if type(a) is bytes else a for a in answers]
    t0 = time.perf_counter_ns()
    for _ in range(per_pass):
        for a, b in zip(answers, copies, strict=True):
            a == b  # noqa: B015
    compare_us = (time.perf_counter_ns() - t0) / 1000 / per_pass
    calls = sum(v for k, v in count.items() if k != "x") / rounds
    sys_us = sum(v for k, v in spent.items() if k != "x") / 1000 / rounds - per_wrap * calls
    print(f"\n== {label}: steady round (load average {os.getloadavg()[0]:.1f})")
    print(f"  bare reads {bare:8.1f} us ({len(ops)} operations; these three: median process CPU time)")
    print(f"  loop round {run:8.1f} us  x{run / bare:.2f}   (runner: statuses, features, publish {run - rep:.1f} us)")
    print(f"  replays    {rep:8.1f} us  x{rep / bare:.2f}   ({len(answers)} logged answers)")
    for kind in sorted(spent, key=lambda k: -spent[k]):
        if kind == "x":
            continue
        n = count[kind] / rounds
        us = spent[kind] / 1000 / rounds - per_wrap * n
        print(f"    {kind:<17} {n:6.1f} calls {us:8.1f} us  {us / n:6.2f} us each")
    each = compare_us / max(1, len(answers))
    print(f"    {'comparisons':<17} {len(answers):6d}       {compare_us:8.1f} us  {each:6.2f} us each")
    rest = rep - sys_us - compare_us
    print(f"    {'bookkeeping':<17} {'':12} {rest:8.1f} us  (replays - system calls - comparisons; the wrapped"
          f" pass took {wrapped_us:.1f} us, {calls:.0f} calls x {per_wrap:.2f} us of wrapper)")
    runner.close()
