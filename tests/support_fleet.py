"""A real fleet for tests: node daemons as `nodecompat serve` subprocesses on fixture hosts, aggregators
in-process or as `nodecompat aggregator` subprocesses, nodes files, and a test CA made with openssl.

The three fixture hosts differ where specs look: h100-server has NVIDIA GPUs (PCI vendor 10de), amd-mi300
has AMD GPUs (1002), plain-vm has neither; every kernel is >= 5. So SPEC_NVIDIA fits only the H100
node, SPEC_ANY fits all, and SPEC_RANKED fits all with scores 10/5/1, giving a known ranking.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port, health_status, stop_process
from support_otlp import OtlpReceiver

from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.v1 import inventory_pb2

REPO = Path(__file__).resolve().parents[1]
HOSTS = REPO / "tests" / "fixtures" / "hosts"
FLEET = {"h100": "h100-server", "mi300": "amd-mi300", "vm": "plain-vm"}

SPEC_NVIDIA = """\
version: v1alpha1
compatibilities:
- description: needs an NVIDIA GPU
  weight: 10
  rules:
  - name: nvidia-gpu
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
"""

SPEC_ANY = """\
version: v1alpha1
compatibilities:
- description: any Linux 5+
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Gt, value: ["4"]}
"""

SPEC_RANKED = """\
version: v1alpha1
compatibilities:
- {description: nvidia, weight: 10, rules: [{name: nv, matchFeatures: [{feature: pci.device,
   matchExpressions: {vendor: {op: In, value: ["10de"]}}}]}]}
- {description: amd, weight: 5, rules: [{name: amd, matchFeatures: [{feature: pci.device,
   matchExpressions: {vendor: {op: In, value: ["1002"]}}}]}]}
- {description: cpu only, weight: 1, rules: [{name: kernel, matchFeatures: [{feature: kernel.version,
   matchExpressions: {major: {op: Gt, value: ["4"]}}}]}]}
"""


def health(address: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 1.0) -> str:
    return health_status(address, timeout, credentials)


@dataclass
class Proc:
    """A nodecompat subprocess (daemon or aggregator) and how to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path
    credentials: grpc.ChannelCredentials | None = None

    def wait_serving(self, timeout: float = 30.0) -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()}")
            if health(self.address, self.credentials, timeout=0.5) == "SERVING":
                return self
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not SERVING after {timeout}s:\n{self.log.read_text()}")

    def terminate(self, timeout: float = 10.0) -> int | None:
        return stop_process(self.proc, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _spawn(
    name: str, cmd: list[str], log: Path, env: dict[str, str] | None, prefix: Sequence[str]
) -> subprocess.Popen[bytes]:
    fh = log.open("wb")
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([*prefix, *cmd], stdout=fh, stderr=subprocess.STDOUT, env=full_env)


def host_root(host: str) -> Path:
    root = HOSTS / host
    assert root.is_dir(), f"fixture host tree {root} is missing (tests/fixtures/hosts/build_fixtures.py)"
    return root


def start_node(
    tmp: Path,
    name: str,
    host: str,
    *,
    listen: str | None = None,
    address: str | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    netns: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    wait: bool = True,
    root: Path | None = None,
) -> Proc:
    """`nodecompat serve` for fixture `host` (or the host tree at `root`, e.g. a writable copy); `address` is
    how the test reaches it (default: listen)."""
    listen = listen or f"127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "nodecompat.clients.cli",
        "serve",
        "--listen",
        listen,
        "--host-root",
        str(root or host_root(host)),
        "--node-name",
        name,
        "--no-hotplug",
        "--refresh-interval",
        "3600",
        *args,
    ]
    prefix = ["ip", "netns", "exec", netns] if netns else []
    log = tmp / f"node-{name}-{listen.replace(':', '_').replace('[', '').replace(']', '')}.log"
    p = Proc(name, _spawn(name, cmd, log, env, prefix), address or listen, log, credentials)
    return p.wait_serving() if wait else p


def start_fleet(tmp: Path, env: dict[str, str] | None = None, **kw: object) -> list[Proc]:
    """The three fixture nodes, started in parallel."""
    procs = [start_node(tmp, name, host, env=env, wait=False, **kw) for name, host in FLEET.items()]  # type: ignore[arg-type]
    try:
        for p in procs:
            p.wait_serving()
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs


def start_aggregator_process(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    inventory: bool = False,
) -> Proc:
    """An aggregator process; without `inventory` it answers live only (--no-inventory), as the tests
    written before the inventory expect."""
    listen = f"127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen", listen, *args]
    if not inventory:
        cmd.append("--no-inventory")
    p = Proc(
        "aggregator",
        _spawn("aggregator", cmd, tmp / f"aggregator-{listen.split(':')[1]}.log", env, []),
        listen,
        tmp / f"aggregator-{listen.split(':')[1]}.log",
        credentials,
    )
    return p.wait_serving()


@contextlib.contextmanager
def aggregator(**config: object) -> Iterator[AggregatorDaemon]:
    """An in-process aggregator on a free loopback port; `.address` is set on it. Live answers only unless
    `sync=SyncConfig(...)` is given (the inventory)."""
    config.setdefault("sync", None)
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", **config))  # type: ignore[arg-type]
    port = d.start()
    d.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        yield d
    finally:
        d.stop(grace=0)


def write_nodes_file(
    path: Path,
    procs: Sequence[Proc],
    labels: dict[str, dict[str, str]] | None = None,
    extra: Sequence[dict[str, object]] = (),
) -> Path:
    """A nodes file for procs; replaced atomically so the aggregator never reads half a file."""
    entries: list[dict[str, object]] = [
        {"name": p.name, "address": p.address, "labels": (labels or {}).get(p.name, {})} for p in procs
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*entries, *extra], indent=1))
    tmp.replace(path)
    return path


def default_labels() -> dict[str, dict[str, str]]:
    return {"h100": {"gpu": "nvidia", "zone": "a"}, "mi300": {"gpu": "amd", "zone": "a"}, "vm": {"zone": "b"}}


# -- a test CA --------------------------------------------------------------------------------------


@dataclass
class Certs:
    dir: Path
    ca: Path
    cert: Path  # server+client certificate signed by ca (SAN: localhost, 127.0.0.1, extra IPs)
    key: Path
    rogue_cert: Path  # a client certificate from another CA
    rogue_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(directory: Path, ips: Sequence[str] = ()) -> Certs:
    """A CA, a leaf for server and client use (serverAuth+clientAuth), a rogue CA's leaf (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN=nodecompat test {ca}",
            cwd=directory,
        )
    san = ",".join(["DNS:localhost", "IP:127.0.0.1", "IP:::1", *(f"IP:{ip}" for ip in ips)])
    (directory / "leaf.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    for leaf, ca in (("leaf", "ca"), ("rogue", "rogue-ca")):
        _openssl("req", *ec, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr", "-subj", f"/CN={leaf}", cwd=directory)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{leaf}.csr",
            "-CA",
            f"{ca}.crt",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-out",
            f"{leaf}.crt",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            cwd=directory,
        )
    return Certs(
        directory,
        directory / "ca.crt",
        directory / "leaf.crt",
        directory / "leaf.key",
        directory / "rogue.crt",
        directory / "rogue.key",
    )


def make_node_cert(certs: Certs, name: str, *, dns: Sequence[str] = (), uris: Sequence[str] = ()) -> tuple[Path, Path]:
    """A leaf from certs' CA for node `name` (serverAuth+clientAuth): SAN DNS `dns` (default: [name]), URI
    `uris`, and IP 127.0.0.1 so the aggregator can dial it. Returns (cert, key)."""
    d = certs.dir
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sans = [*(f"DNS:{n}" for n in (dns or [name])), *(f"URI:{u}" for u in uris), "IP:127.0.0.1"]
    (d / f"{name}.ext").write_text(
        f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


# -- module-scoped fleet ----------------------------------------------------------------------------


@dataclass
class Fleet:
    nodes: list[Proc]
    otlp: OtlpReceiver
    tmp: Path

    def by_name(self, name: str) -> Proc:
        return next(p for p in self.nodes if p.name == name)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Three node daemons (h100, mi300, vm) exporting traces to one OTLP receiver."""
    tmp = tmp_path_factory.mktemp("fleet")
    otlp = OtlpReceiver()
    procs = start_fleet(tmp, env=otlp.env("nodecompat-node"))
    try:
        yield Fleet(procs, otlp, tmp)
    finally:
        for p in procs:
            p.terminate()
        otlp.stop()


def wait_until(pred: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Poll `pred` every 50 ms until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def first_watch_message(address: str) -> inventory_pb2.WatchFeaturesResponse:
    """A daemon's first WatchFeatures message (its current features, round id and fingerprint)."""
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_stream(
            "/nodecompat.v1.NodeService/WatchFeatures",
            request_serializer=inventory_pb2.WatchFeaturesRequest.SerializeToString,
            response_deserializer=inventory_pb2.WatchFeaturesResponse.FromString,
        )(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=5.0), timeout=30)
        first = next(call)
        call.cancel()
    return first  # type: ignore[no-any-return]
