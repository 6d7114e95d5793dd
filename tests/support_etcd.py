"""A real etcd (Debian's etcd-server, `make test-deps`) on loopback for the shared-registration tests:
free client and peer ports, a temporary data dir, killed at the end; or a three-member cluster
(start_etcd_cluster) for the failover tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support_daemon import free_port, stop_process
from support_fleet import Certs

# s: the in-process replicas' etcd watch read timeout (AggregatorConfig.store_watch_read_timeout; the product's
# WATCH_READ_TIMEOUT is 1 s). An idle watch is re-opened that often from the same revision, and stop() waits at
# most that long for each of a replica's watches instead of up to a second each.
WATCH_READ_TIMEOUT = 0.25


@dataclass
class Etcd:
    endpoint: str  # HOST:PORT of the client URL
    proc: subprocess.Popen  # type: ignore[type-arg]
    peer_port: int = 0

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"


def start_etcd(data_dir: Path, timeout: float = 30.0, ports: tuple[int, int] | None = None,
               tls: Certs | None = None) -> Etcd:
    """etcd on (client, peer) ports (free ones by default; the same ones and data_dir restart it). With
    `tls`: the client port serves HTTPS with tls's leaf and requires a client certificate its CA signed."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make test-deps` (Debian's etcd-server)")
    client, peer = ports or (free_port(), free_port())
    scheme = "https" if tls else "http"
    cmd = ["etcd", "--name", "t0", "--data-dir", str(data_dir / "etcd"),
           "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
           "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
           "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
           "--initial-cluster", f"t0=http://127.0.0.1:{peer}", "--log-level", "warn"]
    if tls:
        cmd += ["--cert-file", str(tls.cert), "--key-file", str(tls.key), "--trusted-ca-file", str(tls.ca),
                "--client-cert-auth"]
    log = (data_dir / "etcd.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"etcd exited {proc.returncode}: {(data_dir / 'etcd.log').read_text()[-2000:]}")
        try:
            kw = {"verify": str(tls.ca), "cert": (str(tls.cert), str(tls.key))} if tls else {}
            if requests.get(f"{scheme}://127.0.0.1:{client}/health", timeout=1, **kw).json().get("health") == "true":  # type: ignore[arg-type]
                return Etcd(f"127.0.0.1:{client}", proc, peer)
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"etcd not healthy in {timeout}s")


def _healthy(client_port: int) -> bool:
    try:
        return bool(requests.get(f"http://127.0.0.1:{client_port}/health", timeout=1).json().get("health") == "true")
    except (requests.RequestException, ValueError):
        return False


def start_etcd_cluster(data_dir: Path, members: int = 3, timeout: float = 30.0) -> list[Etcd]:
    """`members` etcd processes forming one cluster on loopback (free client and peer ports, started at once
    since none is healthy before a quorum has joined); every member healthy on return."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make test-deps` (Debian's etcd-server)")
    ports = [(free_port(), free_port()) for _ in range(members)]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer}" for i, (_c, peer) in enumerate(ports))
    token = f"t-{ports[0][1]}"  # one token for the cluster (peers with another are refused)
    out: list[Etcd] = []
    try:
        for i, (client, peer) in enumerate(ports):
            cmd = ["etcd", "--name", f"m{i}", "--data-dir", str(data_dir / f"etcd-m{i}"),
                   "--listen-client-urls", f"http://127.0.0.1:{client}",
                   "--advertise-client-urls", f"http://127.0.0.1:{client}",
                   "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", token, "--log-level", "warn"]
            log = (data_dir / f"etcd-m{i}.log").open("ab")
            out.append(Etcd(f"127.0.0.1:{client}", subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), peer))
        deadline = time.monotonic() + timeout
        waiting = list(range(members))
        while waiting and time.monotonic() < deadline:
            for i in list(waiting):
                if out[i].proc.poll() is not None:
                    raise AssertionError(f"etcd m{i} exited {out[i].proc.returncode}: "
                                         f"{(data_dir / f'etcd-m{i}.log').read_text()[-2000:]}")
                if _healthy(ports[i][0]):
                    waiting.remove(i)
            time.sleep(0.1)
        if waiting:
            raise AssertionError(f"etcd members {waiting} not healthy in {timeout}s")
        return out
    except BaseException:
        for e in out:
            stop_process(e.proc, 5.0)
        raise


def leader(members: list[Etcd]) -> int:
    """Index of the member the cluster's members report as raft leader (etcd's /v3/maintenance/status)."""
    for e in members:
        if e.proc.poll() is not None:
            continue
        try:
            status = requests.post(f"http://{e.endpoint}/v3/maintenance/status", json={}, timeout=2).json()
        except (requests.RequestException, ValueError):
            continue
        ids = {}
        for m in requests.post(f"http://{e.endpoint}/v3/cluster/member/list", json={}, timeout=2).json()["members"]:
            ids[m["ID"]] = m["name"]
        return int(ids[status["leader"]].removeprefix("m"))
    raise AssertionError("no etcd member answers its status")


def wait_for(what: str, pred: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll `pred` every 50 ms until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen in {timeout}s")


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    e = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        stop_process(e.proc, 5.0)
