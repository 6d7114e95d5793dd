"""A real etcd (Debian's etcd-server, `make test-deps`) on loopback for the shared-registration tests:
free client and peer ports, a temporary data dir, killed at the end."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support_daemon import free_port, stop_process


@dataclass
class Etcd:
    endpoint: str  # HOST:PORT of the client URL
    proc: subprocess.Popen  # type: ignore[type-arg]
    peer_port: int = 0

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"


def start_etcd(data_dir: Path, timeout: float = 30.0, ports: tuple[int, int] | None = None) -> Etcd:
    """etcd on (client, peer) ports (free ones by default; the same ones and data_dir restart it)."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make test-deps` (Debian's etcd-server)")
    client, peer = ports or (free_port(), free_port())
    cmd = ["etcd", "--name", "t0", "--data-dir", str(data_dir / "etcd"),
           "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
           "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-cluster", f"t0=http://127.0.0.1:{peer}", "--log-level", "warn"]
    log = (data_dir / "etcd.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"etcd exited {proc.returncode}: {(data_dir / 'etcd.log').read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{client}/health", timeout=1).json().get("health") == "true":
                return Etcd(f"127.0.0.1:{client}", proc, peer)
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"etcd not healthy in {timeout}s")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    e = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        stop_process(e.proc, 5.0)
