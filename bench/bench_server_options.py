"""What each of our gRPC server options costs an empty call (issue 11: empty RPC on a nodecompat server within
0.97 of a bare grpc server).

Starts one bare grpc.aio health server per variant (the bench_daemon.py bare server, with a list of core
options), plus the nodecompat daemon itself, and measures Health/Check on each in interleaved slices (every
variant once per round, `--rounds` rounds, so a neighbour's load weighs on all alike): calls/s from one
client thread (serial) or 16 (16 in flight), and the server process's CPU per call (all threads,
/proc/PID/stat), a figure a busy machine disturbs far less than calls/s. Each variant is our option list
(server/runtime/grpc_server.py server_options) with one option added to the bare server or removed from ours.
Prints a table, ratios to the bare server; asserts nothing.

--instructions N: instead, each server runs under valgrind's callgrind and the bench counts the instructions
it executes (all threads) for N serial calls after a warm-up (callgrind_control zeroes and dumps the counts):
a figure other processes on the machine do not disturb (the per-call work, not its wake-ups or cache misses).
On the daemon it also counts N cached ValidateImage calls (bench_rpc.SPEC).

Usage: .venv/bin/python bench/bench_server_options.py [--seconds S] [--rounds N] [--inflight 1,16] [--only a,b]
       .venv/bin/python bench/bench_server_options.py --instructions 2000 [--only bare,bare+idle,daemon]
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
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from bench_daemon import BARE_SERVER, proc_cpu, rate  # noqa: E402
from support_daemon import free_port, start_daemon, stop_process  # noqa: E402

from nodecompat.server.runtime.grpc_server import server_options  # noqa: E402

# the options that go together (keepalive time and timeout; the message limits)
GROUPS = {
    "msg": ("grpc.max_receive_message_length", "grpc.max_send_message_length"),
    "reuseport": ("grpc.so_reuseport",),
    "idle": ("grpc.max_connection_idle_ms",),
    "keepalive": ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms"),
    "minping": ("grpc.http2.min_ping_interval_without_data_ms",),
}


def variants() -> dict[str, list[tuple[str, object]]]:
    ours = server_options()
    out: dict[str, list[tuple[str, object]]] = {"bare": [], "bare again": [], "ours": ours}  # bare again: noise
    for group, names in GROUPS.items():
        out[f"bare+{group}"] = [o for o in ours if o[0] in names]
        out[f"ours-{group}"] = [o for o in ours if o[0] not in names]
    return out


def _instructions(command: list[str], address: str, calls: dict[str, Callable[[], object]], n: int,
                  out: Path) -> dict[str, float]:
    """Instructions per call of `command` (a server on `address`) under callgrind, for each of `calls`."""
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            end = time.monotonic() + 600
            while True:  # SERVING (the daemon's first round under valgrind takes a while)
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=30).status == 1:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > end:
                    raise TimeoutError(f"{command}: not SERVING under valgrind within 600 s")
                time.sleep(1)
            result: dict[str, float] = {}
            for i, (name, make) in enumerate(calls.items(), 1):
                call = make(ch)  # type: ignore[operator]
                for _ in range(200):
                    call()
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
                for _ in range(n):
                    call()
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
                dump = Path(f"{out}.{proc.pid}.{i}")
                for _ in range(100):
                    if dump.exists() and "\ntotals:" in dump.read_text():  # the last line: written whole
                        break
                    time.sleep(0.2)
                summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
                result[name] = int(summary.split()[1]) / n
            return result
    finally:
        stop_process(proc, 10)


def instructions(chosen: dict[str, list[tuple[str, object]]], with_daemon: bool, n: int) -> None:
    """Print instructions per call of every variant (run side by side: the counts do not depend on load)."""
    from concurrent.futures import ThreadPoolExecutor

    from bench_rpc import SPEC

    from nodecompat.v1 import node_pb2, node_pb2_grpc

    def health(ch: grpc.Channel) -> Callable[[], object]:
        stub, req = health_pb2_grpc.HealthStub(ch), health_pb2.HealthCheckRequest()
        return lambda: stub.Check(req, timeout=600)

    def validate(ch: grpc.Channel) -> Callable[[], object]:
        stub, req = node_pb2_grpc.NodeServiceStub(ch), node_pb2.ValidateImageRequest(spec=SPEC)
        return lambda: stub.ValidateImage(req, timeout=600)

    out = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    jobs: dict[str, tuple[list[str], str, dict[str, object]]] = {}
    for name, opts in chosen.items():
        addr = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-c", BARE_SERVER, addr, "aio", json.dumps(opts)]
        jobs[name] = (argv, addr, {"Health/Check": health})
    if with_daemon:
        addr = f"127.0.0.1:{free_port()}"
        jobs["daemon"] = ([sys.executable, "-m", "nodecompat.clients.cli", "serve", "--listen", addr, "--node-name",
                           "bench", "--no-hotplug", "--refresh-interval", "3600"], addr,
                          {"Health/Check": health, "ValidateImage cached": validate})
    with ThreadPoolExecutor(len(jobs)) as ex:
        futures = {name: ex.submit(_instructions, cmd, addr, calls, n, out / name.replace("+", "_"))  # type: ignore[arg-type]
                   for name, (cmd, addr, calls) in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    base = results.get("bare", {}).get("Health/Check", 0.0)
    print(f"instructions per call (callgrind, all threads, {n} serial calls after 200 warm-up ones; output in {out})")
    for name, per in results.items():
        for call, ir in per.items():
            ratio = f"{ir / base:.4f}" if base else "-"
            print(f"  {name:<16} {call:<22} {ir:>10.0f}  /bare Health {ratio}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="per slice")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--inflight", default="1,16")
    ap.add_argument("--only", default="", help="comma-separated variants (bare, ours, bare+idle, ours-idle, daemon...)")
    ap.add_argument("--no-daemon", action="store_true")
    ap.add_argument("--instructions", type=int, default=0, metavar="N", help="count instructions (valgrind)")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    os.environ.clear()
    os.environ.update(env)
    wanted = [w for w in args.only.split(",") if w]
    chosen = {k: v for k, v in variants().items() if not wanted or k in wanted}
    if args.instructions:
        instructions(chosen, not args.no_daemon and (not wanted or "daemon" in wanted), args.instructions)
        return 0
    procs: dict[str, subprocess.Popen[bytes]] = {}
    addrs: dict[str, str] = {}
    daemon = None
    try:
        for name, opts in chosen.items():
            addrs[name] = f"127.0.0.1:{free_port()}"
            procs[name] = subprocess.Popen([sys.executable, "-c", BARE_SERVER, addrs[name], "aio", json.dumps(opts)])
        if not args.no_daemon and (not wanted or "daemon" in wanted):
            tmp = Path("/tmp/nodecompat-bench")
            tmp.mkdir(exist_ok=True)
            daemon = start_daemon(tmp, name="bench")
            addrs["daemon"] = daemon.address
        pids = {n: p.pid for n, p in procs.items()}
        if daemon is not None:
            pids["daemon"] = daemon.proc.pid
        req = health_pb2.HealthCheckRequest()
        channels = {n: grpc.insecure_channel(a) for n, a in addrs.items()}
        stubs = {n: health_pb2_grpc.HealthStub(c) for n, c in channels.items()}
        for n, c in channels.items():
            grpc.channel_ready_future(c).result(timeout=30)
            for _ in range(50):
                stubs[n].Check(req, timeout=10)
        names = list(addrs)
        print(f"{len(names)} servers, {args.rounds} rounds x {args.seconds:g} s slices, load {os.getloadavg()[0]:.1f}")
        for inflight in (int(x) for x in args.inflight.split(",")):
            rates: dict[str, list[float]] = {n: [] for n in names}
            cpu: dict[str, list[float]] = {n: [] for n in names}  # CPU s per slice
            calls: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for n in order:
                    stub = stubs[n]
                    c0 = proc_cpu(pids[n])
                    t0 = time.monotonic()
                    rt = rate(lambda stub=stub: stub.Check(req, timeout=10), args.seconds, inflight)
                    dt = time.monotonic() - t0
                    rates[n].append(rt)
                    cpu[n].append(proc_cpu(pids[n]) - c0)
                    calls[n].append(rt * dt)
            per_call = {n: sum(cpu[n]) / sum(calls[n]) for n in names}  # CPU ticks are 10 ms: summed
            base_rate = statistics.median(rates["bare"]) if "bare" in rates else 1.0
            base_cpu = per_call.get("bare", 1.0)
            print(f"in flight {inflight}: {'variant':<16} {'calls/s':>8} {'÷bare':>6} {'CPU us/call':>11} {'÷bare':>6}")
            for n in names:
                mr, mc = statistics.median(rates[n]), per_call[n]
                print(f"             {n:<16} {mr:>8.0f} {mr / base_rate:>6.3f} {mc * 1e6:>11.1f} {mc / base_cpu:>6.3f}")
        for c in channels.values():
            c.close()
    finally:
        for p in procs.values():
            stop_process(p, 5)
        if daemon is not None:
            daemon.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
