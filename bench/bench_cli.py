"""CLI start-up figures (issue 11 item 4): how far `nodecompat` is from a bare interpreter start.

Rows, each the median of 3 runs with min and max, as a ratio to `python -c pass` (the same interpreter,
measured in the same run, so the ratio holds on a busy or a fast machine alike):
- `nodecompat validate --spec F --features S` wall time (S: a saved snapshot of a fixture host), target <= 4x;
- `nodecompat serve` from exec to grpc.health.v1 SERVING, target <= 6x (includes the first probe round of
  this machine; the health poll uses a channel with a 10 ms reconnect backoff so gRPC's default 1 s
  backoff does not hide the start time).
Prints figures; asserts nothing. Each row is one line starting with `ROW` (figure | median | min | max |
limit median | ratio | target) for the overall `make bench` report.

Usage: .venv/bin/python bench/bench_cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
NODECOMPAT = [sys.executable, "-c", "import sys; from nodecompat.clients.cli import main; sys.exit(main())"]
CLI = str(Path(sys.executable).with_name("nodecompat"))
if os.path.exists(CLI):
    NODECOMPAT = [CLI]


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_quiet(cmd: list[str]) -> Callable[[], None]:
    def go() -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    return go


def serve_to_serving(env: dict[str, str]) -> Callable[[], None]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from support_daemon import free_port, stop_process

    def go() -> None:
        port = free_port()
        address = f"127.0.0.1:{port}"
        options = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10),
                   ("grpc.max_reconnect_backoff_ms", 20)]
        channel = grpc.insecure_channel(address, options=options)  # ready before exec: not timed twice
        stub = health_pb2_grpc.HealthStub(channel)
        proc = subprocess.Popen([*NODECOMPAT, "serve", "--listen", address, "--no-hotplug"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.002)
            raise RuntimeError("the daemon did not report SERVING within 60 s")
        finally:
            channel.close()
            stop_process(proc, 10)

    return go


def measure(fn: Callable[[], None], runs: int) -> list[float]:
    fn()  # warm the page cache and the byte-code cache once, not counted
    return [timed(fn) for _ in range(runs)]


def row(figure: str, samples: list[float], limit: list[float], target: float) -> str:
    med, lim = statistics.median(samples), statistics.median(limit)
    ratio = med / lim
    verdict = "ok" if ratio <= target else "OVER"
    return (f"ROW {figure} | {med * 1000:.0f} ms | min {min(samples) * 1000:.0f} | max {max(samples) * 1000:.0f} "
            f"| python -c pass {lim * 1000:.0f} ms (min {min(limit) * 1000:.0f}, max {max(limit) * 1000:.0f}) "
            f"| {ratio:.1f}x | target <= {target:g}x {verdict}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodecompat-bench-cli-") as tmp:
        # As installed: byte code cached (this environment may set PYTHONDONTWRITEBYTECODE; the cache goes
        # to a temporary prefix, not into the tree), tracing off.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        os.environ.clear()
        os.environ.update(env)
        snapshot = Path(tmp) / "node.json"
        with open(snapshot, "w") as out:
            subprocess.run([*NODECOMPAT, "features", "--host-root", str(ROOT / "tests/fixtures/hosts/h100-server"),
                            "-o", "json"], stdout=out, check=True)
        spec = str(ROOT / "examples/gpu-node.yaml")
        base = measure(run_quiet([sys.executable, "-c", "pass"]), args.runs)
        validate = measure(run_quiet([*NODECOMPAT, "validate", "--spec", spec, "--features", str(snapshot)]),
                           args.runs)
        base2 = measure(run_quiet([sys.executable, "-c", "pass"]), args.runs)
        serve = measure(serve_to_serving(env), args.runs)
    limit = base + base2
    print(f"CLI start-up, {args.runs} runs each (median, min, max); limit: {sys.executable} -c pass")
    print(row("nodecompat validate --spec F --features S wall / python -c pass", validate, limit, 4))
    print(row("nodecompat serve exec -> health SERVING / python -c pass", serve, limit, 6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
