"""Aggregator CPU per RegisterNode renewal: answered on the event loop (FleetService.register_on_loop, the
runtime's call fast path) vs through the worker pool (the same aggregator with the loop gate held shut),
measured in the same run, alternated, so a shared machine's load weighs on both.

An in-process AggregatorDaemon (no inventory: a renewal alone, as `nodecompat aggregator --no-inventory`)
and a child process of clients (64 connections, at most 48 calls in flight, as bench/inventory_push_sim.py's
re-registration) that registers N nodes, then renews each of them 3 times; the aggregator's CPU (all its
threads, /proc/self/stat) over the renewals, divided by the renewals. Each mode runs `--repeats` times, the
modes alternating; prints the median (min, max) per mode and the ratio loop / workers. Asserts nothing.

    .venv/bin/python bench/bench_renewal.py [--nodes 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

IN_FLIGHT = 48
CHANNELS = 64
RENEWALS = 3  # per node


def _cpu(pid: str = "self") -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _clients(address: str, n: int) -> None:
    """Child: register n nodes, print REGISTERED, wait for a line, renew each RENEWALS times, print RENEWED."""
    import grpc

    from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA
    from nodecompat.v1 import fleet_pb2

    async def run() -> None:
        calls = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]).unary_unary(
            "/nodecompat.v1.FleetService/RegisterNode",
            request_serializer=fleet_pb2.RegisterNodeRequest.SerializeToString,
            response_deserializer=fleet_pb2.RegisterNodeResponse.FromString) for _ in range(CHANNELS)]
        reqs = [fleet_pb2.RegisterNodeRequest(name=f"n{i:05d}", address=f"127.1.{i // 250}.{1 + i % 250}:9",
                                              ttl_seconds=600) for i in range(n)]
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            async with gate:
                await calls[i % CHANNELS](reqs[i], timeout=60, metadata=((LEASE_KEY_METADATA, f"key-{i}"),))

        await asyncio.gather(*(one(i) for i in range(n)))
        print("REGISTERED", flush=True)
        sys.stdin.readline()
        for _ in range(RENEWALS):
            await asyncio.gather(*(one(i) for i in range(n)))
        print("RENEWED", flush=True)

    asyncio.run(run())


def _one(on_loop: bool, n: int) -> tuple[float, float, int]:
    """(aggregator CPU s per renewal, renewals a second, calls answered on the loop) for one mode."""
    from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
    from nodecompat.server.inventory.registration_auth import RegistrationPolicy

    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=600, max_registrations=n + 16,
                                            registration=RegistrationPolicy(allow_unauthenticated=True), sync=None))
    port = agg.start()
    if not on_loop:
        agg.runtime.gate.limit = -1.0  # the gate never opens: every call takes the worker path
    child = subprocess.Popen([sys.executable, __file__, "--clients", f"127.0.0.1:{port}", str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "REGISTERED", "the clients ended"
        time.sleep(0.5)
        c0, t0 = _cpu(), time.perf_counter()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "RENEWED", "the clients ended"
        c1, t1 = _cpu(), time.perf_counter()
        renewals = RENEWALS * n
        return (c1 - c0) / renewals, renewals / (t1 - t0), agg.runtime.gate.answers
    finally:
        child.wait(30)
        agg.stop(grace=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    got: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for on_loop in (False, True):
            got[on_loop].append(_one(on_loop, args.nodes))
    for on_loop, label in ((False, "through workers"), (True, "on the event loop")):
        cpu = [c * 1e3 for c, _, _ in got[on_loop]]
        rate = [r for _, r, _ in got[on_loop]]
        print(f"RegisterNode renewal {label}: {statistics.median(cpu):.3f} ms aggregator CPU (min {min(cpu):.3f}, "
              f"max {max(cpu):.3f}), {statistics.median(rate):.0f} renewals/s; answered on the loop "
              f"{[a for _, _, a in got[on_loop]]} (registrations included)")
    ratios = [a[0] / b[0] for a, b in zip(got[True], got[False], strict=True)]
    print(f"  (loop / workers, aggregator CPU per renewal: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
          f"max {max(ratios):.2f}); {args.nodes} nodes x {RENEWALS} renewals, {CHANNELS} connections, {IN_FLIGHT} in "
          f"flight; loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--clients":
        _clients(sys.argv[2], int(sys.argv[3]))
    else:
        main()
