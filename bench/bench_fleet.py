"""Fleet simulator: the wall time of one ValidateFleet call for 10, 100, 1,000 and 10,000 nodes, and per node.

One simulator process serves NodeService for every simulated node: a single gRPC server listening on
0.0.0.0:PORT, and each node is a distinct loopback address 127.x.y.z:PORT (all of 127/8 reaches lo on
Linux), so the aggregator opens one channel and one TCP connection per node exactly as with a real
fleet, while the simulator answers from a precomputed ValidateImageResponse (the real evaluation
of one node is measured by the daemon's own benchmarks; this one measures the fan-out). The
aggregator runs in this process with its defaults (concurrency 64, `--pool-mib` 96) and the process
settings of `nodecompat aggregator` (server/runtime/malloc_tuning.py limit_arenas before any thread starts,
server/runtime/gc_tuning.py tune_for_serving), and is driven through the real client, with the aggregator's default
overall deadline. Figures: the first (cold: connections set up)
call and the median (min, max) of warm calls; failed nodes (must be 0: every node reported OK within the
deadline); the aggregator's RSS growth per known node (each size runs in its own process): right after the
calls, with a connection kept to every node up to the pool's byte budget (`RSS/node`: a connected channel costs
~36 KiB, ~30 of it in gRPC core; channel_pool.MAX_POOL_BYTES keeps ~2,700, so 1,000 nodes are all connected
and 10,000 are not: past the budget a call gets a channel of its own, closed when it ends), and at rest, once
the channel pool's idle bound has passed and its sweep closed them (`at rest`).

The table's row: at 1,000 nodes, the warm fan-out's cost per node / the cost of one unary ValidateImage
issued by grpc.aio from the same process to the same simulated nodes at the same concurrency (warm
channels, nothing else: the asyncio floor), measured alternately, 3 times (target <= 1.3).

The trade-off row (`--tradeoff-mib`): the same 1,000 nodes under a pool budget small enough for the memory
target (connections past it are made and closed per fan-out), with both figures of that run: RSS per known
node right after the calls and the fan-out / floor ratio. A connected channel holds ~31 KiB, so no budget
meets both targets at 1,000 nodes (docs/security.md, "Aggregator memory and --pool-mib").

Every figure is printed for each fan-out transport (`--transport`, the aggregator's --fanout-transport): by
default the aggregator's own default first and the other beside it; grpc (a grpc.aio channel a node) and h2 (the
lean HTTP/2 client, server/h2/unary.py: ~4 KiB a kept connection). The trade-off row is grpc's (with h2 the
default budget keeps ~24,000 connections).

    .venv/bin/python bench/bench_fleet.py [--sizes 10,100,1000,10000] [--repeat 3] [--concurrency 64]
        [--pool-mib 96] [--tradeoff-mib 10 (0: no trade-off row)] [--transport grpc,h2]

No asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

# The trade-off row's budget (MiB): 227 connections. 1,000 nodes, arenas capped, one run each at load ~30:
# 250 kept 15.5 KiB per node right after, 341 kept 20.4 (bench), 350 kept 17.7, 450 kept 20.6: the connections'
# share varies with how much of their freed memory the next fan-out's reuses; most nodes reconnect every time.
TRADEOFF_MIB = 8.0


def serve_simulator(port_file: str, workers: int) -> None:
    """Child process: one NodeService for all simulated nodes (answers 'compatible, score 1')."""
    from nodecompat.v1 import node_pb2, node_pb2_grpc, validation_pb2

    response = node_pb2.ValidateImageResponse(
        compatible=True,
        score=1,
        report=validation_pb2.ValidationReport(
            sets=[validation_pb2.SetVerdict(passed=True, weight=1)], node_name="simulated"
        ),
    )

    class Simulated(node_pb2_grpc.NodeServiceServicer):
        async def ValidateImage(self, request, context):
            return response

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        node_pb2_grpc.add_NodeServiceServicer_to_server(Simulated(), server)
        port = server.add_insecure_port("0.0.0.0:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(serve())


def node_address(i: int, port: int) -> str:
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}:{port}"


SPEC = (
    "version: v1alpha1\ncompatibilities:\n- rules:\n  - name: k\n    matchFeatures:\n    - feature: kernel.version\n"
    "      matchExpressions: {major: {op: Gt, value: ['4']}}\n"
)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def aio_floor(addresses: list[str], concurrency: int, rounds: int) -> list[float]:
    """Seconds per call of len(addresses) unary ValidateImage calls issued by grpc.aio from this process,
    `concurrency` in flight, over warm channels (one warm-up round first), `rounds` times."""
    from nodecompat.v1 import node_pb2

    request = node_pb2.ValidateImageRequest(spec=SPEC)

    async def run() -> list[float]:
        channels = [grpc.aio.insecure_channel(a) for a in addresses]
        calls = [
            ch.unary_unary(
                "/nodecompat.v1.NodeService/ValidateImage",
                request_serializer=node_pb2.ValidateImageRequest.SerializeToString,
                response_deserializer=node_pb2.ValidateImageResponse.FromString,
            )
            for ch in channels
        ]
        out = []
        for r in range(rounds + 1):
            sem = asyncio.Semaphore(concurrency)

            async def one(call, sem: asyncio.Semaphore = sem) -> None:  # type: ignore[no-untyped-def]
                async with sem:
                    await call(request, timeout=30)

            t0 = time.perf_counter()
            await asyncio.gather(*(one(c) for c in calls))
            if r:
                out.append((time.perf_counter() - t0) / len(calls))
        for ch in channels:
            await ch.close()
        return out

    return asyncio.run(run())


def one_size(n: int, port: int, concurrency: int, repeat: int, floor: bool, tmp: Path,
             pool_bytes: int, transport: str = "grpc") -> dict[str, object]:
    """Child process: one aggregator for n simulated nodes; cold + warm calls; RSS; optionally the row."""
    from nodecompat.server.runtime.malloc_tuning import limit_arenas

    limit_arenas()  # as `nodecompat aggregator` does, before any thread starts
    from nodecompat.clients.fleet_client import FleetClient
    from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
    from nodecompat.server.fleet.channel_pool import TRIM_DELAY
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    nodes = tmp / f"nodes-{n}.json"
    addresses = [node_address(i, port) for i in range(n)]
    nodes.write_text(json.dumps([{"name": f"sim-{i:05d}", "address": a} for i, a in enumerate(addresses)]))
    agg = AggregatorDaemon(
        AggregatorConfig(listen="127.0.0.1:0", nodes_file=str(nodes), concurrency=concurrency, node_timeout=30,
                         check_new_nodes=False, sync=None, pool_bytes=pool_bytes,
                         fanout_transport=transport)  # live fan-out only: no inventory
    )
    tune_for_serving()  # as `nodecompat aggregator` does, before start()
    agg_port = agg.start()
    rss0 = rss_kib()
    out: dict[str, object] = {"n": n, "kept": agg.pool.max_channels}
    try:
        with FleetClient(f"127.0.0.1:{agg_port}") as client:
            t0 = time.perf_counter()
            cold = client.validate(spec_text=SPEC)  # the aggregator's default deadline
            out["cold"] = time.perf_counter() - t0
            failed = [cold.summary.failed]
            reported = [len(cold.nodes)]
            warm: list[float] = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                ans = client.validate(spec_text=SPEC)
                warm.append(time.perf_counter() - t0)
                failed.append(ans.summary.failed)
                reported.append(len(ans.nodes))
            out["rss_per_node_kib"] = (rss_kib() - rss0) / n
            out["rss_mib"] = rss_kib() / 1024
            # At rest: what stays once the pool's idle bound has passed (the sweep closes idle channels and
            # returns the freed heap pages; pool.close_idle is that sweep, run now instead of idle_close later).
            # Measured before the row, whose grpc.aio floor opens and closes channels of its own.
            agg.pool.close_idle(0)
            time.sleep(TRIM_DELAY + 0.5)
            out["rest_per_node_kib"] = (rss_kib() - rss0) / n
            if floor:
                client.validate(spec_text=SPEC)  # connect again: the row compares warm calls
                fleet_per_node, floor_per_call = [], []
                for _ in range(3):  # figure and limit alternately, in this process
                    t0 = time.perf_counter()
                    client.validate(spec_text=SPEC)
                    fleet_per_node.append((time.perf_counter() - t0) / n)
                    floor_per_call.append(aio_floor(addresses, concurrency, 1)[0])
                out["row"] = (fleet_per_node, floor_per_call)
        out.update(warm=warm, failed=max(failed), reported=min(reported), deadline=agg.config.default_timeout)
    finally:
        agg.stop(grace=0)
    return out


MIB = 1024 * 1024


def ratio_figures(fig: list[float], lim: list[float]) -> tuple[str, float]:
    """The row's middle columns for figure/limit pairs measured alternately (s per node), and the median ratio."""
    ratios = [f / b for f, b in zip(fig, lim, strict=True)]
    med = statistics.median(ratios)
    return (
        f"{statistics.median(fig) * 1e6:.0f} us (min {min(fig) * 1e6:.0f}, max {max(fig) * 1e6:.0f}) | "
        f"grpc.aio floor {statistics.median(lim) * 1e6:.0f} us (min {min(lim) * 1e6:.0f}, "
        f"max {max(lim) * 1e6:.0f}) | ratio {med:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
    ), med



def default_transports() -> str:
    """"D,O": D the fan-out transport `nodecompat aggregator` uses without flags, O the other one."""
    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config

    first = build_config(build_parser().parse_args(["aggregator"])).fanout_transport  # the flags' defaults resolved
    return f"{first},{'grpc' if first == 'h2' else 'h2'}"


def rows_for(transport: str, child: Callable[[int, float], dict[str, Any]], args: argparse.Namespace) -> None:
    """Every size, the row and the memory rows for one --fanout-transport (child(n, pool_mib) runs one size)."""
    label = f"[--fanout-transport {transport}]"
    print(
        f"{label}\n{'nodes':>6} {'cold wall':>10} {'warm wall median (min, max)':>30} {'per node':>9} "
        f"{'reported':>9} {'failed':>7} {'deadline':>9} {'agg RSS':>8} {'RSS/node':>9} {'at rest':>8}"
    )
    row = None
    memory_rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        res = child(n, args.pool_mib)
        warm = res["warm"]
        med = statistics.median(warm)
        print(
            f"{n:>6} {res['cold'] * 1e3:>8.0f}ms {med * 1e3:>10.0f}ms ({min(warm) * 1e3:.0f}, "
            f"{max(warm) * 1e3:.0f}) {'':>6} {med / n * 1e6:>7.0f}us {res['reported']:>9} {res['failed']:>7} "
            f"{res['deadline']:>8.0f}s {res['rss_mib']:>6.0f}MiB {res['rss_per_node_kib']:>7.1f}KiB "
            f"{res['rest_per_node_kib']:>5.1f}KiB"
        )
        if "row" in res:
            row = (n, *res["row"])
        if n >= 1000:
            memory_rows.append((n, min(n, res["kept"]), res["rss_per_node_kib"], res["rest_per_node_kib"]))
    if row is not None:
        n, fig, lim = row
        cols, med = ratio_figures(fig, lim)
        print(
            f"ROW {label} fleet fan-out cost per node ({n} nodes) / one unary grpc.aio call from the same process | "
            f"{cols} | target <= 1.3 | {'met' if med <= 1.3 else 'NOT MET'}"
        )
    for n, kept, after, rest in memory_rows:  # one process per size: a single figure each, no median
        print(
            f"ROW {label} aggregator RSS per known node ({n} nodes) | right after the calls ("
            f"{kept} connections kept) {after:.1f} KiB |"
            f" at rest (idle channels closed) {rest:.1f} KiB | target <= 20 KiB | "
            f"{'met' if after <= 20 else 'NOT MET'} right after, {'met' if rest <= 20 else 'NOT MET'} at rest"
        )
    if args.tradeoff_mib > 0 and row is not None and transport == "grpc":  # a budget for the memory target
        n = row[0]
        res = child(n, args.tradeoff_mib)
        cols, med = ratio_figures(*res["row"])
        after = res["rss_per_node_kib"]
        print(
            f"ROW {label} trade-off at {n} nodes, --pool-mib {args.tradeoff_mib:g} ({min(n, res['kept'])} "
            f"connections kept): RSS per known node right after {after:.1f} KiB (target <= 20: "
            f"{'met' if after <= 20 else 'NOT MET'}) | fan-out cost per node {cols} | target <= 1.3 | "
            f"{'met' if med <= 1.3 else 'NOT MET'}"
        )


def main() -> None:
    from nodecompat.server.limits import MAX_POOL_BYTES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--repeat", type=int, default=3, help="warm calls per size")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--row-size", type=int, default=1000)
    ap.add_argument("--pool-mib", type=float, default=MAX_POOL_BYTES / MIB, help="the aggregator's --pool-mib")
    ap.add_argument("--tradeoff-mib", type=float, default=TRADEOFF_MIB,
                    help="--pool-mib of the trade-off row at --row-size nodes (0: no trade-off row)")
    ap.add_argument("--transport", default=None, help="the aggregator's --fanout-transport: grpc, h2 or both "
                    "(every row for each, in this order); default: the aggregator's default first, the other beside it")
    ap.add_argument("--serve-simulator", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_simulator:
        serve_simulator(args.serve_simulator, 0)
        return
    if args.one:
        res = one_size(args.one, args.port, args.concurrency, args.repeat, args.one == args.row_size, Path(args.tmp),
                       int(args.pool_mib * MIB), args.transport)
        print(json.dumps(res))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port_file = tmp / "port"
    sim = subprocess.Popen([sys.executable, __file__, "--serve-simulator", str(port_file)])

    def child(n: int, pool_mib: float, transport: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--one", str(n), "--port", str(port), "--tmp", str(tmp),
               "--repeat", str(args.repeat), "--concurrency", str(args.concurrency),
               "--row-size", str(args.row_size), "--pool-mib", str(pool_mib), "--transport", transport]
        out: dict[str, Any] = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        return out

    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        print(
            f"fleet simulator: one grpc.aio NodeService process on port {port}, nodes at 127.x.y.z:{port}; "
            f"aggregator in its own process per size, concurrency {args.concurrency}, --pool-mib {args.pool_mib:g}; "
            f"{os.cpu_count()} CPUs"
        )
        for transport in (args.transport or default_transports()).split(","):
            rows_for(transport, functools.partial(child, transport=transport), args)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
