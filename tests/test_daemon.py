"""The node daemon as a user meets it: a real `nodecompat serve` process, real ports, real grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_daemon import DaemonProcess, health_status, make_plugin, start_daemon

from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")

PLUGINS = """
import time
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput

class GoodProbe(Probe):
    name = "acme"
    features = (FeatureInfo("acme.widget", frozenset({"attribute"})),)
    def discover(self, host):
        out = ProbeOutput()
        out.features.add_attributes("acme.widget", {"count": "3"})
        out.notes.append("acme widgets counted")
        return out

class RaisingProbe(Probe):
    name = "broken"
    features = (FeatureInfo("broken.thing", frozenset({"flag"})),)
    def discover(self, host):
        raise RuntimeError("sensor on fire")

class HangingProbe(Probe):
    name = "stuck"
    timeout = 0.5
    features = (FeatureInfo("stuck.thing", frozenset({"flag"})),)
    def discover(self, host):
        time.sleep(3600)

class SlowProbe(Probe):
    name = "slow"
    timeout = 30
    features = (FeatureInfo("slow.thing", frozenset({"attribute"})),)
    def discover(self, host):
        knob = __import__("os").environ.get("ACME_SLOW_FILE", "")  # the test's own file (tmp_path): seconds
        time.sleep(float(open(knob).read()) if knob and __import__("os").path.exists(knob) else 0)
        out = ProbeOutput()
        out.features.add_attributes("slow.thing", {"t": str(time.time())})
        return out
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with the default flags on this machine, shared by the tests that only call it (none changes its
    configuration; the one refresh asked for is within a single test)."""
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    d.terminate()


def _plugin_env(tmp_path: Path, names: dict[str, str]) -> dict[str, str]:
    site = make_plugin(tmp_path, "acmeprobes", PLUGINS, names)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_services_checks_health_and_gets_features(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, name="grpcurl-node")
    try:
        listed = _grpcurl(d.address, "list")
        assert listed.returncode == 0, listed.stderr
        services = set(listed.stdout.split())
        assert {"nodecompat.v1.NodeService", "grpc.health.v1.Health"} <= services
        assert any("reflection" in s for s in services)

        desc = _grpcurl(d.address, "describe", "nodecompat.v1.NodeService")
        assert "rpc GetFeatures" in desc.stdout and "rpc ValidateImage" in desc.stdout

        health = _grpcurl(d.address, "grpc.health.v1.Health/Check")
        assert json.loads(health.stdout) == {"status": "SERVING"}

        got = _grpcurl("-d", "{}", d.address, "nodecompat.v1.NodeService/GetFeatures")
        assert got.returncode == 0, got.stderr
        body = json.loads(got.stdout)
        assert body["node_name"] == "grpcurl-node"
        assert "probed_at" in body
        probe_names = {p["name"] for p in body["probes"]}
        assert {"pci", "kernel", "cpu"} <= probe_names
        # The PCI devices the daemon reports are the ones this machine has.
        pci = body["features"].get("instances", {}).get("pci.device", {}).get("elements", [])
        reported = sorted(e["attributes"]["address"] for e in pci)
        assert reported == sorted(os.listdir("/sys/bus/pci/devices"))
    finally:
        assert d.terminate() == 0


def test_get_features_prefix_filter_and_refresh(daemon: DaemonProcess) -> None:
    d = daemon
    with grpc.insecure_channel(d.address) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        full = stub.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10)
        assert "kernel.version" in full.features.attributes
        only = stub.GetFeatures(features_pb2.GetFeaturesRequest(prefixes=["kernel.version"]), timeout=10)
        names = set(only.features.flags) | set(only.features.attributes) | set(only.features.instances)
        assert names == {"kernel.version"}
        assert only.features.attributes["kernel.version"].elements["full"]
        again = stub.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10)
        assert again.probed_at == full.probed_at  # cached
        fresh = stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=10)
        assert fresh.probed_at.ToDatetime() > full.probed_at.ToDatetime()


def test_third_party_probes_raising_and_hanging_are_isolated(tmp_path: Path) -> None:
    env = _plugin_env(
        tmp_path,
        {"acme": "acmeprobes:GoodProbe", "broken": "acmeprobes:RaisingProbe", "stuck": "acmeprobes:HangingProbe"},
    )
    d = start_daemon(tmp_path, env=env)
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            resp = stub.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10)
            statuses = {s.name: s for s in resp.probes}
            assert statuses["acme"].ok and statuses["acme"].notes == ["acme widgets counted"]
            assert dict(resp.features.attributes["acme.widget"].elements) == {"count": "3"}
            assert not statuses["broken"].ok
            assert "sensor on fire" in statuses["broken"].error
            assert list(statuses["broken"].features) == ["broken.thing"]
            assert not statuses["stuck"].ok and statuses["stuck"].timed_out
            assert "timed out" in statuses["stuck"].error
            # Built-in probes still delivered.
            assert statuses["kernel"].ok and "kernel.version" in resp.features.attributes
            # A refresh while the hung call is still running reports it without starting another.
            again = stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=10)
            stuck = {s.name: s for s in again.probes}["stuck"]
            assert stuck.timed_out and "still hung" in stuck.error
    finally:
        assert d.terminate() == 0


def test_health_not_serving_until_first_round_then_sigterm_drains(tmp_path: Path) -> None:
    slow_file = tmp_path / "slow-seconds"  # not a machine-wide path: parallel workers and other checkouts run this too
    slow_file.write_text("2")
    try:
        env = {**_plugin_env(tmp_path, {"slow": "acmeprobes:SlowProbe"}), "ACME_SLOW_FILE": str(slow_file)}
        d = start_daemon(tmp_path, env=env, wait=False)
        # Before the first (slow) round is done the daemon answers health, but NOT_SERVING.
        deadline = time.monotonic() + 20
        seen = set()
        while time.monotonic() < deadline:
            st = health_status(d.address)
            seen.add(st)
            if st == "SERVING":
                break
            time.sleep(0.05)
        assert "NOT_SERVING" in seen and "SERVING" in seen, seen

        # An in-flight refresh (2 s) survives SIGTERM: it completes, then the process exits 0.
        result: dict[str, object] = {}

        def call() -> None:
            with grpc.insecure_channel(d.address) as ch:
                stub = node_pb2_grpc.NodeServiceStub(ch)
                try:
                    r = stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=20)
                    result["ok"] = "slow.thing" in r.features.attributes
                except grpc.RpcError as exc:
                    result["error"] = exc.code().name

        t = threading.Thread(target=call)
        t.start()
        time.sleep(0.5)
        rc = d.terminate(timeout=20)
        t.join(20)
        assert result == {"ok": True}
        assert rc == 0
    finally:
        slow_file.unlink(missing_ok=True)


def test_validate_image_without_source_is_invalid_argument(daemon: DaemonProcess) -> None:
    d = daemon
    with grpc.insecure_channel(d.address) as ch:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.ValidateImage(node_pb2.ValidateImageRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "image" in (err.value.details() or "")


def test_cli_features_local_and_from_daemon_agree(daemon: DaemonProcess) -> None:
    d = daemon
    cli = [sys.executable, "-m", "nodecompat.clients.cli", "features", "-o", "json", "--prefix", "pci."]
    local = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    remote = subprocess.run([*cli, "--node", d.address], capture_output=True, text=True, timeout=60)
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    lj, rj = json.loads(local.stdout), json.loads(remote.stdout)
    assert lj["instances"]["pci.device"] == rj["instances"]["pci.device"]
    assert {p["name"] for p in rj["probes"]} >= {"pci", "kernel"}
    table = subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "features", "--node", d.address],
        capture_output=True, text=True, timeout=60,
    )
    assert "pci.device  (instances" in table.stdout and "probes:" in table.stdout


def test_cli_features_errors_are_exit_2(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "features", "--host-root", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2 and "not a directory" in bad.stderr and bad.stdout == ""


def test_serve_refuses_a_busy_port_and_a_missing_host_root(daemon: DaemonProcess, tmp_path: Path) -> None:
    d = daemon
    cli = [sys.executable, "-m", "nodecompat.clients.cli", "serve", "--no-hotplug"]
    busy = subprocess.run([*cli, "--listen", d.address], capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and busy.stderr == (
        f"nodecompat serve: --listen {d.address}: port {d.address.rpartition(':')[2]} is already in use "
        "(another `nodecompat serve`, `make run` or aggregator?): stop it, or choose a free port with "
        "--listen HOST:PORT (`make run LISTEN=HOST:PORT`)\n"
    )  # one readable line: no gRPC core log line (`add_port.cc ... Failed to add port`) before it
    assert health_status(d.address) == "SERVING"  # the first daemon is unharmed (no SO_REUSEPORT)
    missing = subprocess.run([*cli, "--host-root", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


MISBEHAVING = """
from nodecompat.features import Features
from nodecompat.probes.base import FeatureInfo, Probe, ProbeOutput

class ReturnsNone(Probe):
    name = "none"
    features = (FeatureInfo("none.thing", frozenset({"flag"})),)
    def discover(self, host):
        return None

class ReturnsDict(Probe):
    name = "dict"
    features = (FeatureInfo("dict.thing", frozenset({"flag"})),)
    def discover(self, host):
        return {"flags": {}}

class Squatter(Probe):
    name = "squatter"
    features = (FeatureInfo("squatter.thing", frozenset({"attribute"})),)
    def discover(self, host):
        out = ProbeOutput()
        out.features.add_attributes("squatter.thing", {"ok": "true"})
        out.features.add_attributes("kernel.version", {"major": "99"})
        return out
"""


def test_probes_returning_garbage_or_undeclared_features_do_not_spoil_the_round(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "badprobes", MISBEHAVING, {
        "none": "badprobes:ReturnsNone", "dict": "badprobes:ReturnsDict", "squatter": "badprobes:Squatter"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    d = start_daemon(tmp_path, "--host-root", str(Path(__file__).parent / "fixtures" / "hosts" / "plain-vm"), env=env)
    try:
        with grpc.insecure_channel(d.address) as ch:
            resp = node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(), timeout=10)
    finally:
        d.terminate()
    st = {s.name: s for s in resp.probes}
    assert not st["none"].ok and "returned NoneType, not a ProbeOutput" in st["none"].error
    assert not st["dict"].ok and "returned dict" in st["dict"].error
    assert st["squatter"].ok and any("kernel.version" in n for n in st["squatter"].notes)
    assert resp.features.attributes["kernel.version"].elements["major"] == "6"  # not overwritten with 99
    assert dict(resp.features.attributes["squatter.thing"].elements) == {"ok": "true"}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--refresh-interval", "0"], "must be greater than 0"),
        (["--refresh-interval", "0.5"], "at least 1 second"),
        (["--probes", "pci,nosuch"], "no probe named 'nosuch'"),
        (["--listen", "127.0.0.1:99999"], "port must be 1-65535"),
        (["--listen", "nocolon"], "expected HOST:PORT"),
        (["--log-level", "bogus"], "invalid choice"),
        (["--tls-cert", "/etc/hostname"], "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/etc/hostname", "--tls-key", "/etc/hostname"], "not a PEM file"),
        (["--listen", "0.0.0.0:50999", "--register", "127.0.0.1:1"], "give --advertise"),
        (["--register", "127.0.0.1:1", "--labels", "a,b=c"], "expected k=v, got a"),
    ],
)
def test_serve_flags_are_checked_before_anything_starts(flags: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "serve", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2 to add a netdev")
def test_daemon_reprobes_when_a_network_device_is_hot_plugged(tmp_path: Path) -> None:
    """No refresh asked for and a one-hour interval: only the kernel's uevent can make the new veth appear."""
    import uuid

    name = f"nc{uuid.uuid4().hex[:8]}"
    d = start_daemon(tmp_path, "--refresh-interval", "3600", hotplug=True)
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)

            def virtual_names() -> set[str]:
                r = stub.GetFeatures(features_pb2.GetFeaturesRequest(prefixes=["network.virtual"]), timeout=10)
                return {i.attributes["name"] for i in r.features.instances["network.virtual"].elements}

            assert name not in virtual_names()
            subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
            try:
                deadline = time.monotonic() + 15
                while name not in virtual_names() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert name in virtual_names(), "the hot-plugged veth never showed up"
            finally:
                subprocess.run(["ip", "link", "del", name], check=False)
    finally:
        d.terminate()
