"""Daemon rows of issue 11's table, each a ratio to a limit measured beside it in the same run.

- ValidateImage, inline spec, answer cached for this probe round  vs  Health/Check on the same daemon,
  same channel: calls/s ratio, serially and with 16 calls in flight (target >= 0.8 both).
- ValidateImage, first time for this spec on this probe round (a GetFeatures refresh before each timed
  call, untimed; the parsed spec is kept)  vs  Health/Check timed the same way: 1/latency ratio (>= 0.5).
- Health/Check on a nodecompat daemon with tracing off  vs  the same on a bare gRPC server (same kind
  of server, same health servicer, nothing else), serially and with 16 in flight (>= 0.97); beside it
  each server's CPU per call (tests/test_empty_rpc_overhead.py shows the Python work per call is equal).
Every figure is taken 3 times, figure and limit interleaved (6 alternating slices each time, so a
neighbour's load on a shared machine weighs on both); each row prints the median with min and max of
the figure, the limit and their ratio. Also the daemon's RSS. Prints; asserts nothing.

Usage: .venv/bin/python bench/bench_daemon.py [--seconds S] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
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

BARE_SERVER = """
import asyncio, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
aio = sys.argv[2] == "aio"
if aio:
    from grpc_health.v1.health import aio as health_aio
    async def main():
        server = grpc.aio.server()
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


def paired_rates(a: Callable[[], object], b: Callable[[], object], seconds: float, inflight: int,
                 slices: int = 6, pids: tuple[int, int] | None = None,
                 cpu_per_call: dict[str, list[float]] | None = None) -> tuple[float, float]:
    """Calls per second of `a` and of `b`, each measured for `seconds` in `slices` alternating slices
    (a, b, a, b, ...), so that a neighbour's load on a shared machine weighs on both alike. With `pids`
    (the servers answering a and b), each one's CPU seconds per call are appended to cpu_per_call["a"/"b"]:
    a figure a busy machine disturbs far less than calls/s."""
    calls = {"a": 0.0, "b": 0.0}
    spent = {"a": 0.0, "b": 0.0}
    cpu = {"a": 0.0, "b": 0.0}
    for _ in range(slices):
        for i, (key, fn) in enumerate((("a", a), ("b", b))):
            c0 = proc_cpu(pids[i]) if pids else 0.0
            t0 = time.monotonic()
            r = rate(fn, seconds / slices, inflight)
            dt = time.monotonic() - t0
            cpu[key] += (proc_cpu(pids[i]) - c0) if pids else 0.0
            calls[key] += r * dt
            spent[key] += dt
    if pids and cpu_per_call is not None:
        for key in ("a", "b"):
            cpu_per_call.setdefault(key, []).append(cpu[key] / calls[key])
    return calls["a"] / spent["a"], calls["b"] / spent["b"]


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
    rows: list[str] = []
    try:
        ch = grpc.insecure_channel(d.address)
        bch = grpc.insecure_channel(bare_addr)
        health = health_pb2_grpc.HealthStub(ch)
        bare_health = health_pb2_grpc.HealthStub(bch)
        node = node_pb2_grpc.NodeServiceStub(ch)
        check = health_pb2.HealthCheckRequest()
        inline = node_pb2.ValidateImageRequest(spec=SPEC)
        refresh = features_pb2.GetFeaturesRequest(refresh=True, prefixes=["none."])
        calls: dict[str, Callable[[], object]] = {
            "health": lambda: health.Check(check, timeout=10),
            "bare": lambda: bare_health.Check(check, timeout=10),
            "cached": lambda: node.ValidateImage(inline, timeout=10),
        }
        grpc.channel_ready_future(bch).result(timeout=20)
        for c in calls.values():
            for _ in range(20):
                c()  # warm: connections, the parsed spec, the cached answer
        size = node.ValidateImage(inline, timeout=10).ByteSize()
        print(f"daemon ({kind} server) on this machine; ValidateImage answer {size} bytes; "
              f"{args.seconds:g}s per figure; {args.repeats} repeats; {os.cpu_count()} CPUs")
        notes: list[str] = []
        for inflight in (1, 16):
            h, v, b, hh = [], [], [], []
            per_call: dict[str, list[float]] = {}
            for _ in range(args.repeats):
                vr, hr = paired_rates(calls["cached"], calls["health"], args.seconds, inflight)
                v.append(vr)
                h.append(hr)
                hhr, br = paired_rates(calls["health"], calls["bare"], args.seconds, inflight,
                                       pids=(d.proc.pid, bare.pid), cpu_per_call=per_call)
                hh.append(hhr)
                b.append(br)
            mode = "serial" if inflight == 1 else "16 in flight"
            rows.append(row(f"ValidateImage inline, cached answer / empty RPC (Health/Check), {mode}", v, h,
                            "Health/Check", "calls/s", True, 0.8))
            rows.append(row(f"empty RPC (Health/Check) nodecompat daemon, tracing off / bare {kind} grpc server, "
                            f"{mode}", hh, b, "bare server", "calls/s", True, 0.97))
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
    finally:
        d.terminate()
        stop_process(bare, 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
