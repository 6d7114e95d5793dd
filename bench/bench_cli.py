"""CLI start-up figures (issue 11 item 4): how far `nodecompat` is from a bare interpreter start.

Rows, each the median of 3 runs with min and max, as a ratio to `python -c pass` (the same interpreter,
measured in the same run, so the ratio holds on a busy or a fast machine alike):
- `nodecompat validate --spec F --features S` wall time (S: a saved snapshot of a fixture host), target <= 4x;
- `nodecompat serve` from exec to grpc.health.v1 SERVING, target <= 6x (includes the first probe round of
  this machine). The poll first waits for the port to accept a TCP connection (a connect every 1 ms),
  then opens the gRPC channel and asks Health/Check every 2 ms: a channel opened before the port
  listens connects only at its next reconnect attempt, and even with a 10 ms backoff asked for, gRPC's
  attempts came 15-100 ms after the port listened (the daemon, timestamped, had set SERVING 15-20 ms
  after listening), hiding the start time in half the runs. The clock stops when the poll sees
  SERVING: the daemon's drain and exit afterwards (SIGTERM, ~60 ms) are not part of the figure, as they
  are not part of start-up.
Prints figures; asserts nothing. Each row is one line starting with `ROW` (figure | median | min | max |
limit median | ratio | target) for the overall `make bench` report.

Usage: .venv/bin/python bench/bench_cli.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
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


CPU: list[float] = []  # CPU seconds (user + system) of the last measured process, all threads


def timed(fn: Callable[[], float | None]) -> float:
    """Wall seconds of fn(), or what fn returns when it times itself (the part it measures)."""
    start = time.perf_counter()
    own = fn()
    return time.perf_counter() - start if own is None else own


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_quiet(cmd: list[str]) -> Callable[[], None]:
    def go() -> None:
        before = _children_cpu()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        CPU.append(_children_cpu() - before)

    return go


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/PID/stat (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    """Return once host:port accepts a TCP connection (tried every 1 ms); RuntimeError past the deadline."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {proc.returncode} before listening") from None
            time.sleep(0.001)
    raise RuntimeError("the daemon did not listen within 60 s")


def serve_to_serving(env: dict[str, str]) -> Callable[[], float]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from support_daemon import free_port, stop_process

    def go() -> float:
        """Seconds from exec to the first health answer saying SERVING."""
        port = free_port()
        address = f"127.0.0.1:{port}"
        start = time.perf_counter()
        proc = subprocess.Popen([*NODECOMPAT, "serve", "--listen", address, "--no-hotplug"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        channel = None
        try:
            deadline = time.monotonic() + 60
            _wait_listening("127.0.0.1", port, proc, deadline)
            channel = grpc.insecure_channel(address)
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        wall = time.perf_counter() - start
                        CPU.append(_proc_cpu(proc.pid))
                        return wall
                except grpc.RpcError:
                    pass
                time.sleep(0.002)
            raise RuntimeError("the daemon did not report SERVING within 60 s")
        finally:
            if channel is not None:
                channel.close()
            stop_process(proc, 10)

    return go


def measure(fn: Callable[[], float | None], runs: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds of `runs` runs (after one uncounted warm-up); their CPU seconds go to `cpu`."""
    fn()  # warm the page cache and the byte-code cache once, not counted
    CPU.clear()
    walls = [timed(fn) for _ in range(runs)]
    if cpu is not None:
        cpu.extend(CPU)
    return walls


def cpu_note(samples: list[float], limit: list[float]) -> str:
    med, lim = statistics.median(samples), statistics.median(limit)
    return (f"  (CPU user+sys: median {med * 1000:.0f} ms vs {lim * 1000:.0f} ms, {med / lim:.1f}x; "
            "less sensitive to a busy machine than wall time)")


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
        base_cpu: list[float] = []
        validate_cpu: list[float] = []
        serve_cpu: list[float] = []
        base = measure(run_quiet([sys.executable, "-c", "pass"]), args.runs, base_cpu)
        validate = measure(run_quiet([*NODECOMPAT, "validate", "--spec", spec, "--features", str(snapshot)]),
                           args.runs, validate_cpu)
        base2 = measure(run_quiet([sys.executable, "-c", "pass"]), args.runs, base_cpu)
        serve = measure(serve_to_serving(env), args.runs, serve_cpu)
    limit = base + base2
    print(f"CLI start-up, {args.runs} runs each (median, min, max); limit: {sys.executable} -c pass")
    print(row("nodecompat validate --spec F --features S wall / python -c pass", validate, limit, 4))
    print(cpu_note(validate_cpu, base_cpu))
    print(row("nodecompat serve exec -> health SERVING / python -c pass", serve, limit, 6))
    print(cpu_note(serve_cpu, base_cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
