"""Soak: a node daemon and an aggregator under steady mixed load for a given time; RSS, open files and
threads of both over time, with their slope.

The fleet: 50 nodes = one real `nodecompat serve` (fixture host plain-vm) + 49 simulated nodes served by
SIMULATORS simulator processes (each one grpc.aio server on its own port; its nodes are distinct loopback
addresses 127.77.k.i:PORT as in bench/bench_fleet.py, so the aggregator holds one connection per node).
Every --kill-every seconds one simulator process is killed (SIGKILL: its nodes vanish mid-call) and
restarted on the same port --down seconds later. The aggregator (`nodecompat aggregator --nodes-file`)
knows all 50 nodes; a few more register and renew themselves through RegisterNode.

Load (steady, from this process, --rate calls per second in all): ValidateFleet with an inline spec
(fan-out to the 50 nodes), ListNodes, RegisterNode renewals, the daemon's ValidateImage (inline specs,
a few distinct ones so both cached and uncached answers are exercised), GetFeatures and Health.
Every --sample seconds it prints, per server process: RSS (MiB), open files, threads. At the end: the
least-squares slope of each per hour over the whole run and over its second half (after warm-up),
and the calls made and their status counts.

    nice .venv/bin/python bench/soak.py --minutes 30 [--rate 8] [--sample 30]

No asserts: it prints figures (bounded in time; it stops everything it started).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
SIMULATORS = 7
NODES = 50
SPEC = (
    "version: v1alpha1\ncompatibilities:\n- rules:\n  - name: k\n    matchFeatures:\n    - feature: kernel.version\n"
    "      matchExpressions: {major: {op: Gt, value: ['4']}}\n"
)


def serve_simulator(port: int, port_file: str) -> None:
    """Child process: NodeService (ValidateImage, GetFeatures) and Health for all its simulated nodes."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc, validation_pb2

    response = node_pb2.ValidateImageResponse(
        compatible=True, score=1,
        report=validation_pb2.ValidationReport(sets=[validation_pb2.SetVerdict(passed=True, weight=1)],
                                               node_name="simulated"),
    )

    class Simulated(node_pb2_grpc.NodeServiceServicer):
        async def ValidateImage(self, request, context):  # type: ignore[no-untyped-def]
            await asyncio.sleep(random.uniform(0.001, 0.02))
            return response

        async def GetFeatures(self, request, context):  # type: ignore[no-untyped-def]
            return features_pb2.GetFeaturesResponse(node_name="simulated")

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        node_pb2_grpc.add_NodeServiceServicer_to_server(Simulated(), server)
        hs = health.aio.HealthServicer()
        await hs.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        bound = server.add_insecure_port(f"0.0.0.0:{port}")
        await server.start()
        Path(port_file).write_text(str(bound))
        await server.wait_for_termination()

    asyncio.run(serve())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_figures(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open files, threads) of a process from /proc."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 3600 * sum((t - mx) * (v - my) for t, v in points) / den


class Simulator:
    def __init__(self, index: int, tmp: Path) -> None:
        self.index = index
        self.port = free_port()
        self.port_file = tmp / f"sim-{index}.port"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-simulator", str(self.port),
                                      str(self.port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while not self.port_file.exists() and time.monotonic() < end:
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_server(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nodecompat.clients.cli", *cmd],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    end = time.monotonic() + seconds
    with grpc.insecure_channel(address) as ch:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"{address} exited: {log.read_text()[-2000:]}")
            try:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"{address} not SERVING after {seconds}s: {log.read_text()[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=8.0, help="calls per second, all kinds together")
    ap.add_argument("--sample", type=float, default=0.0, help="seconds between samples (default: 30 samples)")
    ap.add_argument("--kill-every", type=float, default=60.0, help="seconds between simulator kills")
    ap.add_argument("--down", type=float, default=10.0, help="seconds a killed simulator stays down")
    ap.add_argument("--inventory", action="store_true", help="run the aggregator with its inventory (WatchFeatures)")
    ap.add_argument("--serve-simulator", nargs=2, metavar=("PORT", "PORT_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_simulator:
        serve_simulator(int(args.serve_simulator[0]), args.serve_simulator[1])
        return
    duration = args.minutes * 60
    sample = args.sample or max(5.0, duration / 30)

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nodecompat.v1 import features_pb2, fleet_pb2, fleet_pb2_grpc, node_pb2, node_pb2_grpc

    tmp = Path(tempfile.mkdtemp(prefix="nodecompat-soak-"))
    sims = [Simulator(i, tmp) for i in range(SIMULATORS)]
    daemon_addr = f"127.0.0.1:{free_port()}"
    agg_addr = f"127.0.0.1:{free_port()}"
    nodes = [{"name": "real-daemon", "address": daemon_addr, "labels": {"kind": "real"}}]
    for i in range(NODES - 1):
        sim = sims[i % SIMULATORS]
        nodes.append({"name": f"sim-{i}", "address": f"127.77.{sim.index}.{1 + i // SIMULATORS}:{sim.port}",
                      "labels": {"kind": "simulated", "group": str(sim.index)}})
    nodes_file = tmp / "nodes.json"
    nodes_file.write_text(json.dumps(nodes))
    started: list[subprocess.Popen[bytes]] = []
    try:
        for s in sims:
            s.start()
        dlog, alog = tmp / "daemon.log", tmp / "aggregator.log"
        daemon = start_server(["serve", "--listen", daemon_addr, "--host-root",
                               str(REPO / "tests/fixtures/hosts/plain-vm"), "--node-name", "real-daemon",
                               "--no-hotplug", "--refresh-interval", "60"], dlog)
        started.append(daemon)
        agg = start_server(["aggregator", "--listen", agg_addr, "--nodes-file", str(nodes_file),
                            "--allow-unauthenticated-registration", "--lease-ttl", "30",
                            *([] if args.inventory else ["--no-inventory"])], alog)
        started.append(agg)
        wait_serving(daemon_addr, daemon, dlog)
        wait_serving(agg_addr, agg, alog)
        print(f"soak: {args.minutes:g} min, {args.rate:g} calls/s, daemon pid {daemon.pid}, aggregator pid "
              f"{agg.pid}, {NODES} nodes ({SIMULATORS} simulator processes), logs in {tmp}", flush=True)

        stop = threading.Event()
        status: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()
        dch, ach = grpc.insecure_channel(daemon_addr), grpc.insecure_channel(agg_addr)
        node, fleet = node_pb2_grpc.NodeServiceStub(dch), fleet_pb2_grpc.FleetServiceStub(ach)
        dhealth, ahealth = health_pb2_grpc.HealthStub(dch), health_pb2_grpc.HealthStub(ach)
        counter = itertools.count()

        def one_call() -> None:
            i = next(counter)
            kind = ("fleet", "validate", "validate", "list", "register", "features", "health", "health")[i % 8]
            try:
                if kind == "fleet":
                    list(fleet.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec=SPEC, timeout_seconds=10),
                                             timeout=15))
                elif kind == "validate":
                    node.ValidateImage(node_pb2.ValidateImageRequest(spec=SPEC + f"# v{i % 20}\n"), timeout=10)
                elif kind == "list":
                    fleet.ListNodes(fleet_pb2.ListNodesRequest(), timeout=10)
                elif kind == "register":
                    fleet.RegisterNode(fleet_pb2.RegisterNodeRequest(
                        name=f"reg-{i % 5}", address=f"127.78.0.{1 + i % 5}:1", ttl_seconds=30), timeout=5)
                elif kind == "features":
                    node.GetFeatures(features_pb2.GetFeaturesRequest(prefixes=["kernel"]), timeout=10)
                else:
                    (dhealth if i % 2 else ahealth).Check(health_pb2.HealthCheckRequest(), timeout=1)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            with lock:
                status[f"{kind} {code}"] += 1

        def loader() -> None:
            period = 1.0 / args.rate
            nxt = time.monotonic()
            while not stop.is_set():
                threading.Thread(target=one_call, daemon=True).start()
                nxt += period
                stop.wait(max(0.0, nxt - time.monotonic()))

        def killer() -> None:
            for k in itertools.count():
                if stop.wait(args.kill_every):
                    return
                s = sims[k % SIMULATORS]
                s.kill()
                if stop.wait(args.down):
                    return
                s.start()

        threads = [threading.Thread(target=loader, daemon=True), threading.Thread(target=killer, daemon=True)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        series: dict[str, list[tuple[float, float, int, int]]] = {"daemon": [], "aggregator": []}
        print(f"{'t (s)':>7} | {'daemon RSS MiB':>14} {'files':>6} {'threads':>7} | "
              f"{'aggregator RSS MiB':>18} {'files':>6} {'threads':>7}", flush=True)
        while True:
            now = time.monotonic() - t0
            row = []
            for name, p in (("daemon", daemon), ("aggregator", agg)):
                if p.poll() is not None:
                    raise SystemExit(f"{name} exited {p.returncode} during the soak (logs in {tmp})")
                rss, files, nthreads = proc_figures(p.pid)
                series[name].append((now, rss, files, nthreads))
                row.append((rss, files, nthreads))
            (r1, f1, t1), (r2, f2, t2) = row
            print(f"{now:7.0f} | {r1:14.1f} {f1:6d} {t1:7d} | {r2:18.1f} {f2:6d} {t2:7d}", flush=True)
            if now >= duration:
                break
            time.sleep(min(sample, max(0.0, duration - now)))
        stop.set()
        for t in threads:
            t.join(args.down + 5)
        print("\nslope per hour (whole run / second half):")
        for name, pts in series.items():
            half = [p for p in pts if p[0] >= duration / 2]
            parts = []
            for label, idx in (("RSS MiB", 1), ("open files", 2), ("threads", 3)):
                whole = slope_per_hour([(p[0], p[idx]) for p in pts])
                second = slope_per_hour([(p[0], p[idx]) for p in half])
                parts.append(f"{label} {whole:+.1f} / {second:+.1f}")
            print(f"  {name:<10} " + ", ".join(parts))
        print("\ncalls (kind status: count):")
        for key, n in sorted(status.items()):
            print(f"  {key}: {n}")
        dch.close()
        ach.close()
    finally:
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for s in sims:
            s.kill()


if __name__ == "__main__":
    main()
