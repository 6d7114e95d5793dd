"""Fleet simulator: the wall time of one ValidateFleet call for 10, 100 and 1,000 nodes, and per node.

One simulator process serves NodeService for every simulated node: a single gRPC server listening on
0.0.0.0:PORT, and each node is a distinct loopback address 127.x.y.z:PORT (all of 127/8 reaches lo on
Linux), so the aggregator opens one channel and one TCP connection per node exactly as with a real
fleet, while the simulator answers from a precomputed ValidateImageResponse (the real evaluation
of one node is measured by the daemon's own benchmarks; this one measures the fan-out). The
aggregator runs in this process with its defaults (concurrency 64) and is driven through the real
client. Figures: the first (cold: connections set up) call and the median of warm calls.

    .venv/bin/python bench/bench_fleet.py [--sizes 10,100,1000] [--repeat 5] [--concurrency 64]

No asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc


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
        def ValidateImage(self, request, context):
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    node_pb2_grpc.add_NodeServiceServicer_to_server(Simulated(), server)
    port = server.add_insecure_port("0.0.0.0:0")
    server.start()
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


def node_address(i: int, port: int) -> str:
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}:{port}"


SPEC = (
    "version: v1alpha1\ncompatibilities:\n- rules:\n  - name: k\n    matchFeatures:\n    - feature: kernel.version\n"
    "      matchExpressions: {major: {op: Gt, value: ['4']}}\n"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--repeat", type=int, default=5, help="warm calls per size")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--sim-workers", type=int, default=16)
    ap.add_argument("--serve-simulator", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_simulator:
        serve_simulator(args.serve_simulator, args.sim_workers)
        return

    from nodecompat.clients.fleet_client import FleetClient
    from nodecompat.server.aggregator import AggregatorConfig, AggregatorDaemon

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    port_file = tmp / "port"
    sim = subprocess.Popen(
        [sys.executable, __file__, "--serve-simulator", str(port_file), "--sim-workers", str(args.sim_workers)]
    )
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        print(
            f"fleet simulator: one NodeService process on port {port}, nodes at 127.x.y.z:{port}; "
            f"aggregator concurrency {args.concurrency}; {os.cpu_count()} CPUs"
        )
        print(
            f"{'nodes':>6} {'cold wall':>10} {'warm wall (median)':>19} {'per node (warm)':>16} "
            f"{'failed':>7} {'summary wall':>13}"
        )
        for n in [int(x) for x in args.sizes.split(",")]:
            nodes = tmp / f"nodes-{n}.json"
            nodes.write_text(json.dumps([{"name": f"sim-{i:04d}", "address": node_address(i, port)} for i in range(n)]))
            agg = AggregatorDaemon(
                AggregatorConfig(
                    listen="127.0.0.1:0", nodes_file=str(nodes), concurrency=args.concurrency, node_timeout=30
                )
            )
            agg_port = agg.start()
            try:
                with FleetClient(f"127.0.0.1:{agg_port}") as client:
                    t0 = time.perf_counter()
                    cold = client.validate(spec_text=SPEC, timeout=120)
                    cold_wall = time.perf_counter() - t0
                    warm = []
                    failed = cold.summary.failed
                    summary_wall = 0.0
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        ans = client.validate(spec_text=SPEC, timeout=120)
                        warm.append(time.perf_counter() - t0)
                        failed = max(failed, ans.summary.failed)
                        summary_wall = ans.summary.wall_seconds
                med = statistics.median(warm)
                print(
                    f"{n:>6} {cold_wall * 1e3:>8.1f}ms {med * 1e3:>17.1f}ms {med / n * 1e6:>14.0f}us "
                    f"{failed:>7} {summary_wall * 1e3:>11.1f}ms"
                )
            finally:
                agg.stop(grace=0)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
