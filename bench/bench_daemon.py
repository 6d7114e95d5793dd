"""Daemon rows of issue 11's table, each a ratio to a limit measured beside it in the same run.

- ValidateImage, inline spec, answer cached for this probe round  vs  Health/Check on the same daemon,
  same channel: calls/s ratio, serially and with 16 calls in flight (target >= 0.8 both).
- ValidateImage, first time for this spec on this probe round (a GetFeatures refresh before each timed
  call, untimed; the parsed spec is kept)  vs  Health/Check timed the same way: 1/latency ratio (>= 0.5).
- Health/Check on a nodecompat daemon with tracing off  vs  the same on a bare gRPC server (same kind
  of server, same health servicer, nothing else), serially and with 16 in flight (>= 0.97); beside it
  each server's CPU per call (tests/test_empty_rpc_overhead.py shows the Python work per call is equal).
Every figure is taken 3 times, figure and limit interleaved (turns of 0.05 s, a b b a ..., so a
neighbour's load on a shared machine weighs on both: paired_rates); each row prints the median with min
and max of the figure, the limit and their ratio. A control measured the same way, a second bare server
against the first, shows the method's own spread on this machine at that moment. Also the daemon's RSS.
Prints; asserts nothing.

Usage: .venv/bin/python bench/bench_daemon.py [--seconds S] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_rpc import SPEC  # noqa: E402
from support_daemon import free_port, start_daemon, stop_process  # noqa: E402

from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc  # noqa: E402

# argv: ADDRESS {aio,sync} [OPTIONS_JSON: the aio server's options, as [[name, value], ...]; bench_server_options.py]
BARE_SERVER = """
import asyncio, json, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
aio = sys.argv[2] == "aio"
if aio:
    from grpc_health.v1.health import aio as health_aio
    async def main():
        server = grpc.aio.server(options=[tuple(o) for o in json.loads(sys.argv[3] if len(sys.argv) > 3 else "[]")])
        h = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(h, server)
        server.add_insecure_port(sys.argv[1])
        await server.start()
        await h.set("", health_pb2.HealthCheckResponse.SERVING)
        await server.wait_for_termination()
    asyncio.run(main())
else:
    from concurrent import futures
    from grpc_health.v1 import health
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    h = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    server.add_insecure_port(sys.argv[1])
    server.start()
    h.set("", health_pb2.HealthCheckResponse.SERVING)
    server.wait_for_termination()
"""


def rate(call: Callable[[], object], seconds: float, inflight: int) -> float:
    """Calls per second of `call()` for `seconds`, with `inflight` concurrent callers."""
    stop = time.monotonic() + seconds

    def worker() -> int:
        n = 0
        while time.monotonic() < stop:
            call()
            n += 1
        return n

    t0 = time.monotonic()
    with ThreadPoolExecutor(inflight) as ex:
        total = sum(ex.map(lambda _: worker(), range(inflight)))
    return total / (time.monotonic() - t0)


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SLICE = 0.05  # s: one target's turn in paired_rates


def paired_rates(a: Callable[[], object], b: Callable[[], object], seconds: float, inflight: int,
                 slice_seconds: float = SLICE, pids: tuple[int, int] | None = None,
                 cpu_per_call: dict[str, list[float]] | None = None) -> tuple[float, float]:
    """Calls per second of `a` and of `b`, each given `seconds` in turns of `slice_seconds` (a b b a a b b a ...),
    so that a neighbour's load on a shared machine weighs on both alike: the same `inflight` caller threads
    run throughout and the main thread points them at one target per turn (a call is counted for the target
    it started on). Short turns matter: on this shared 2-CPU machine the load changes within a second. Two
    identical bare servers, 1.5 s each, 5 repeats, load 28-50: serial 0.33-2.22 of each other (median 0.72)
    with 6 turns of 0.25 s and a new thread pool per turn (the method before), 0.81-2.06 (median 0.93) this
    way; 16 in flight 0.74-1.34 (0.76) before, 0.78-1.04 (0.97) this way.
    With `pids` (the servers answering a and b), each one's CPU seconds per call are appended to
    cpu_per_call["a"/"b"]: a figure a busy machine disturbs far less than calls/s."""
    fns = (a, b)
    target = [0]
    done = threading.Event()
    counts = [[0, 0] for _ in range(inflight)]

    def caller(mine: list[int]) -> None:
        while not done.is_set():
            t = target[0]
            fns[t]()
            mine[t] += 1

    spent = [0.0, 0.0]
    cpu0 = [proc_cpu(p) for p in pids] if pids else []
    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in counts]
    turns = max(4, 4 * round(seconds / (2 * slice_seconds)))  # a multiple of 4: starts and ends with a
    t_prev = time.monotonic()
    for th in threads:
        th.start()
    for i in range(turns):
        target[0] = (i + 1) // 2 % 2  # 0 1 1 0 0 1 1 0 ...: a drift in load weighs on both alike
        time.sleep(slice_seconds)
        now = time.monotonic()
        spent[target[0]] += now - t_prev
        t_prev = now
    calls = [sum(c[k] for c in counts) for k in (0, 1)]  # calls ended by the last turn's end
    done.set()
    for th in threads:
        th.join()
    if pids and cpu_per_call is not None:
        for k, key in enumerate(("a", "b")):
            cpu_per_call.setdefault(key, []).append((proc_cpu(pids[k]) - cpu0[k]) / calls[k])
    return calls[0] / spent[0], calls[1] / spent[1]


def fmt(values: list[float], unit: str, scale: float = 1.0, digits: int = 0) -> str:
    med = statistics.median(values) * scale
    return f"{med:.{digits}f} {unit} (min {min(values) * scale:.{digits}f}, max {max(values) * scale:.{digits}f})"


def row(figure: str, fig: list[float], lim: list[float], limit_name: str, unit: str, higher_is_better: bool,
        target: float, scale: float = 1.0, digits: int = 0) -> str:
    ratios = [f / b for f, b in zip(fig, lim, strict=True)]
    med = statistics.median(ratios)
    ok = med >= target if higher_is_better else med <= target
    sign = ">=" if higher_is_better else "<="
    return (
        f"ROW {figure} | {fmt(fig, unit, scale, digits)} | {limit_name} {fmt(lim, unit, scale, digits)} "
        f"| ratio {med:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}) | target {sign} {target:g} "
        f"| {'met' if ok else 'NOT MET'}"
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per figure and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--uncached-calls", type=int, default=60)
    args = ap.parse_args()
    tmp = Path("/tmp/nodecompat-bench")
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    os.environ.clear()
    os.environ.update(env)
    try:
        import nodecompat.server.runtime.runtime  # noqa: F401  (the daemon serves on grpc.aio)

        kind = "aio"
    except ImportError:
        kind = "sync"
    d = start_daemon(tmp, name="bench")
    bare_addr = f"127.0.0.1:{free_port()}"
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, bare_addr, kind])
    twin_addr = f"127.0.0.1:{free_port()}"  # the control: a second bare server, measured against the first
    twin = subprocess.Popen([sys.executable, "-c", BARE_SERVER, twin_addr, kind])
    rows: list[str] = []
    try:
        ch = grpc.insecure_channel(d.address)
        bch = grpc.insecure_channel(bare_addr)
        tch = grpc.insecure_channel(twin_addr)
        health = health_pb2_grpc.HealthStub(ch)
        bare_health = health_pb2_grpc.HealthStub(bch)
        twin_health = health_pb2_grpc.HealthStub(tch)
        node = node_pb2_grpc.NodeServiceStub(ch)
        check = health_pb2.HealthCheckRequest()
        inline = node_pb2.ValidateImageRequest(spec=SPEC)
        refresh = features_pb2.GetFeaturesRequest(refresh=True, prefixes=["none."])
        calls: dict[str, Callable[[], object]] = {
            "health": lambda: health.Check(check, timeout=10),
            "bare": lambda: bare_health.Check(check, timeout=10),
            "twin": lambda: twin_health.Check(check, timeout=10),
            "cached": lambda: node.ValidateImage(inline, timeout=10),
        }
        grpc.channel_ready_future(bch).result(timeout=20)
        grpc.channel_ready_future(tch).result(timeout=20)
        for c in calls.values():
            for _ in range(20):
                c()  # warm: connections, the parsed spec, the cached answer
        size = node.ValidateImage(inline, timeout=10).ByteSize()
        print(f"daemon ({kind} server) on this machine; ValidateImage answer {size} bytes; "
              f"{args.seconds:g}s per figure; {args.repeats} repeats; {os.cpu_count()} CPUs")
        notes: list[str] = []
        for inflight in (1, 16):
            h, v, b, hh, tw, bb = [], [], [], [], [], []
            per_call: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                vr, hr = paired_rates(calls["cached"], calls["health"], args.seconds, inflight)
                v.append(vr)
                h.append(hr)
                hhr, br = paired_rates(calls["health"], calls["bare"], args.seconds, inflight,
                                       pids=(d.proc.pid, bare.pid), cpu_per_call=per_call)
                hh.append(hhr)
                b.append(br)
                twr, bbr = paired_rates(calls["twin"], calls["bare"], args.seconds, inflight)
                tw.append(twr)
                bb.append(bbr)
            mode = "serial" if inflight == 1 else "16 in flight"
            rows.append(row(f"ValidateImage inline, cached answer / empty RPC (Health/Check), {mode}", v, h,
                            "Health/Check", "calls/s", True, 0.8))
            rows.append(row(f"empty RPC (Health/Check) nodecompat daemon, tracing off / bare {kind} grpc server, "
                            f"{mode}", hh, b, "bare server", "calls/s", True, 0.97))
            control = [t / x for t, x in zip(tw, bb, strict=True)]
            notes.append(f"  control, {mode}: a second bare server / the bare server (identical: the method's own "
                         f"spread) ratio {fmt(control, '', digits=2)}")
            notes.append(f"  server CPU per empty call, {mode}: nodecompat daemon {fmt(per_call['a'], 'us', 1e6)}, "
                         f"bare server {fmt(per_call['b'], 'us', 1e6)} (all threads, /proc/PID/stat)")
        unc, hl = [], []
        for _ in range(args.repeats):
            lat_v, lat_h = [], []
            for _ in range(args.uncached_calls):
                node.GetFeatures(refresh, timeout=30)  # a new probe round: no answer is cached for it
                t0 = time.perf_counter()
                node.ValidateImage(inline, timeout=10)
                lat_v.append(time.perf_counter() - t0)
                node.GetFeatures(refresh, timeout=30)  # the same conditions for the limit
                t0 = time.perf_counter()
                health.Check(check, timeout=10)
                lat_h.append(time.perf_counter() - t0)
            unc.append(1 / statistics.median(lat_v))
            hl.append(1 / statistics.median(lat_h))
        rows.append(row("ValidateImage inline, first time on this probe round (uncached) / empty RPC, serial", unc,
                        hl, "Health/Check", "calls/s", True, 0.5))
        for r in rows:
            print(r)
        for note in notes:
            print(note)
        print(f"RSS daemon after the runs: {rss_kib(d.proc.pid) / 1024:.1f} MiB")
        ch.close()
        bch.close()
        tch.close()
    finally:
        d.terminate()
        stop_process(bare, 5)
        stop_process(twin, 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
