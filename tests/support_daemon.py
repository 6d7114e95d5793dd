"""Real node daemons for tests: `nodecompat serve` subprocesses on free loopback ports.

Also: third-party probe plugins made on the fly (a dist-info with an entry point in the
`nodecompat.probes` group on PYTHONPATH), so plugin loading is tested through the real mechanism.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _port_range() -> tuple[int, int]:
    """[low, high) of the ports free_port draws from: below the kernel's ephemeral range
    (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 here), which bind(0) and every outgoing connection take
    their local port from, so a port handed out here cannot be taken by another process's connection before the
    server it is meant for binds it; under pytest-xdist each worker (PYTEST_XDIST_WORKER gwN of
    PYTEST_XDIST_WORKER_COUNT) draws from its own slice, so two workers never hand out the same port."""
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    low, high = 10000, min(first, 32768)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        size = (high - low) // count
        low += int(worker[2:]) % count * size
        high = low + size
    return low, high


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=2000)  # this process's latest free_port() answers


def free_port() -> int:
    """A loopback TCP port nothing listens on or is connected from now (its bind succeeds), drawn at random from
    _port_range() and not among this process's last 2,000 answers (a server started from an earlier answer may
    not have bound it yet): for a server the test starts next on 127.0.0.1:PORT."""
    low, high = _port_range()
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    with socket.socket() as s:  # the slice is crowded: the kernel's choice, as before
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, timeout: float) -> int:  # type: ignore[type-arg]
    """SIGTERM (the drain path under test), SIGKILL if it has not exited within `timeout`; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def health_status(address: str, timeout: float = 1.0, credentials: grpc.ChannelCredentials | None = None) -> str:
    """The grpc.health.v1 status name of a server, or the gRPC error code name when the check fails."""
    ch = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[str]
    address: str
    log: Path

    def wait_serving(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log.read_text()}")
            if health_status(self.address) == "SERVING":
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not SERVING after {timeout}s: {self.log.read_text()}")

    def terminate(self, timeout: float = 15.0) -> int:
        return stop_process(self.proc, timeout)


def start_daemon(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str = "test-node",
    wait: bool = True,
    hotplug: bool = False,
) -> DaemonProcess:
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / f"daemon-{port}.log"
    cmd = [
        sys.executable, "-m", "nodecompat.clients.cli", "serve", "--listen", address,
        "--node-name", name, *([] if hotplug else ["--no-hotplug"]), "--refresh-interval", "3600", *args,
    ]
    full_env = {**os.environ, **(env or {})}
    fh = log.open("w")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=full_env, text=True)
    d = DaemonProcess(proc, address, log)
    if wait:
        d.wait_serving()
    return d


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[object]:
    started: list[DaemonProcess] = []

    def factory(*args: str, **kw: object) -> DaemonProcess:
        d = start_daemon(tmp_path, *args, **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield factory
    for d in started:
        d.terminate()


def make_plugin(tmp_path: Path, module: str, body: str, entry_points: dict[str, str]) -> Path:
    """Write a third-party probe distribution (module + dist-info) under tmp_path; return the dir for PYTHONPATH."""
    site = tmp_path / "plugins"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[nodecompat.probes]\n{eps}\n")
    return site
