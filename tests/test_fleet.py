# ruff: noqa: F811  (pytest fixtures imported from support modules are redefined as test parameters)
"""The fleet as orchestrators meet it: real node daemons on fixture hosts behind a real aggregator.

Daemons are `nodecompat serve` subprocesses (module-scoped, shared); aggregators are in-process
(cheap, one per test, each with its own nodes file) unless the test needs a separate process
(tracing, the CLI). Faults are real: SIGKILLed daemons, a TCP proxy that delays or cuts traffic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port
from support_fleet import (
    SPEC_ANY,
    SPEC_NVIDIA,
    SPEC_RANKED,
    Fleet,
    aggregator,
    default_labels,
    fleet,  # noqa: F401 (fixture)
    start_aggregator_process,
    start_node,
    write_nodes_file,
)
from support_proxy import TcpProxy, tcp_proxy  # noqa: F401 (fixture)
from support_registry import registry  # noqa: F401 (fixture)

from nodecompat.clients.fleet_client import FleetCallError, FleetClient, NodeEntry, NodeVerdict
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.server.errors import MAX_TAGS
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.node.node_service import RegistryOptions
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

CLI = [sys.executable, "-m", "nodecompat.clients.cli"]
# Test registries listen on loopback at free ports, over plain HTTP (docs/security.md: the allow-list).
# Registration tests here are about leases, not identity (tests/test_fleet_identity.py is): open registration.
OPEN_REGISTRATION = RegistrationPolicy(allow_unauthenticated=True)
LOOPBACK_REGISTRIES = RegistryOptions(policy=RegistryPolicy.parse(["http://127.0.0.1:*"]))


def nodes_file(fleet: Fleet, tmp_path: Path, extra: list[dict[str, object]] | None = None) -> Path:
    return write_nodes_file(tmp_path / "nodes.json", fleet.nodes, default_labels(), extra or [])


def by_name(nodes: list[NodeVerdict]) -> dict[str, NodeVerdict]:
    return {n.name: n for n in nodes}


def test_each_node_gets_its_own_verdict(fleet: Fleet, tmp_path: Path) -> None:
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg, FleetClient(agg.address) as client:
        answer = client.validate(spec_text=SPEC_NVIDIA, timeout=20)
    got = by_name(answer.nodes)
    assert set(got) == {"h100", "mi300", "vm"}
    assert all(n.status == "OK" and n.attempts == 1 for n in got.values()), got
    assert got["h100"].compatible and got["h100"].score == 10 and got["h100"].reasons == []
    for name in ("mi300", "vm"):
        assert not got[name].compatible
        assert got[name].reasons and any("10de" in r for r in got[name].reasons), got[name].reasons
    assert got["mi300"].labels == {"gpu": "amd", "zone": "a"}
    s = answer.summary
    assert (s.compatible, s.incompatible, s.failed) == (1, 2, 0)
    assert s.ranking[0] == "h100"


def test_ranking_follows_compatible_score_name(fleet: Fleet, tmp_path: Path) -> None:
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg, FleetClient(agg.address) as client:
        ranked = client.validate(spec_text=SPEC_RANKED, timeout=20)
        every = client.validate(spec_text=SPEC_ANY, timeout=20)
    assert {n.name: n.score for n in ranked.nodes} == {"h100": 10, "mi300": 5, "vm": 1}
    assert ranked.summary.ranking == ["h100", "mi300", "vm"]
    assert every.summary.compatible == 3 and all(n.compatible for n in every.nodes)
    assert every.summary.ranking == ["h100", "mi300", "vm"]  # equal scores: by name


def test_selector_limits_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg, FleetClient(agg.address) as client:
        nvidia = client.validate(spec_text=SPEC_ANY, selector={"gpu": "nvidia"}, timeout=20)
        zone_a = client.validate(spec_text=SPEC_ANY, selector={"zone": "a"}, timeout=20)
        none = client.validate(spec_text=SPEC_ANY, selector={"zone": "nowhere"}, timeout=20)
        listed = client.list_nodes({"zone": "a"})
    assert [n.name for n in nvidia.nodes] == ["h100"]
    assert sorted(n.name for n in zone_a.nodes) == ["h100", "mi300"]
    assert none.nodes == [] and none.summary.compatible == 0 and none.summary.ranking == []
    assert sorted(n.name for n in listed) == ["h100", "mi300"]


def test_bad_requests_are_refused_with_a_reason(fleet: Fleet, tmp_path: Path) -> None:
    with (
        aggregator(nodes_file=str(nodes_file(fleet, tmp_path)), registration=OPEN_REGISTRATION) as agg,
        FleetClient(agg.address) as client,
    ):
        with pytest.raises(FleetCallError) as bad_spec:
            client.validate(spec_text="compatibilities: [{rules: [{name: x, matchFeatures: 7}]}]", timeout=10)
        stub = fleet_pb2_grpc.FleetServiceStub(client.channel)
        with pytest.raises(grpc.RpcError) as no_source:
            list(stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(), timeout=5))
        with pytest.raises(grpc.RpcError) as bad_timeout:
            list(stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec=SPEC_ANY, timeout_seconds=-1), timeout=5))
        bad_registrations = [
            fleet_pb2.RegisterNodeRequest(name="x", address="no-port"),
            fleet_pb2.RegisterNodeRequest(name="", address="h:1"),
            fleet_pb2.RegisterNodeRequest(name="x", address="h:1", labels={f"k{i}": "v" for i in range(65)}),
        ]
        for req in bad_registrations:
            with pytest.raises(grpc.RpcError) as bad_reg:
                stub.RegisterNode(req, timeout=5)
            assert bad_reg.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert [n.name for n in client.list_nodes()] == ["h100", "mi300", "vm"]  # nothing half-registered
    assert bad_spec.value.code == "INVALID_ARGUMENT" and "matchFeatures" in bad_spec.value.message
    assert no_source.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_timeout.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timeout_seconds" in (bad_timeout.value.details() or "")


def test_tags_and_platform_are_checked_once_up_front(fleet: Fleet, tmp_path: Path) -> None:
    """What every daemon would refuse is one INVALID_ARGUMENT, not N node errors; a malformed --platform is
    refused with an inline spec too (it would otherwise be silently ignored)."""
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg, FleetClient(agg.address) as client:
        with pytest.raises(FleetCallError) as many_tags:
            client.validate(spec_text=SPEC_ANY, tags=[f"t{i}" for i in range(MAX_TAGS + 1)], timeout=10)
        refused = {}
        for platform in ("linux/amd64/v8/extra", "/amd64", "linux/"):
            with pytest.raises(FleetCallError) as bad_platform:
                client.validate(spec_text=SPEC_ANY, platform=platform, timeout=10)
            refused[platform] = bad_platform.value
        at_the_cap = client.validate(spec_text=SPEC_ANY, tags=[f"t{i}" for i in range(MAX_TAGS)], timeout=10)
        good_platform = client.validate(spec_text=SPEC_ANY, platform="linux/arm64", timeout=10)
    assert many_tags.value.code == "INVALID_ARGUMENT"
    assert f"at most {MAX_TAGS} tags, got {MAX_TAGS + 1}" in many_tags.value.message
    for platform, err in refused.items():
        assert err.code == "INVALID_ARGUMENT" and "platform" in err.message and platform in err.message, err
    assert {n.status for n in at_the_cap.nodes} == {"OK"} and len(at_the_cap.nodes) == 3
    assert good_platform.summary.compatible == 3


def unread_bytes(port: int) -> dict[str, int]:
    """Bytes waiting unread in each established TCP socket with local port `port`, by remote address: what
    the kernel holds for a process that has not read it yet (/proc/net/tcp*; gRPC's sockets are dual-stack,
    so IPv4 peers show in tcp6 as v4-mapped addresses)."""
    out: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # 01: ESTABLISHED
                out[remote] = int(queues.split(":")[1], 16)
    return out


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_killed_daemon_mid_call_is_unavailable_and_the_rest_answer(
    fleet: Fleet, tmp_path: Path, transport: str,
) -> None:
    """A daemon killed while our request sits in its socket: UNAVAILABLE (retried once), the others answer.

    The victim is SIGSTOPped after a first call has warmed the aggregator's connection to it, so the fleet
    call's request demonstrably arrives (the kernel holds it unread in that connection) before SIGKILL."""
    victim = start_node(tmp_path, "victim", "plain-vm")
    port = int(victim.address.rsplit(":", 1)[1])
    extra = [{"name": "victim", "address": victim.address}]
    timeout = 15.0
    try:
        with (
            aggregator(nodes_file=str(nodes_file(fleet, tmp_path, extra)), fanout_transport=transport) as agg,
            FleetClient(agg.address) as c,
        ):
            warm = c.validate(spec_text=SPEC_NVIDIA, timeout=timeout)
            assert by_name(warm.nodes)["victim"].status == "OK"
            conns = unread_bytes(port)
            assert len(conns) == 1 and set(conns.values()) == {0}, conns  # the aggregator's pooled channel
            (channel,) = conns
            os.kill(victim.proc.pid, signal.SIGSTOP)
            seen: list[NodeVerdict] = []
            summary = None
            summary_at = 0.0
            started = time.monotonic()
            deadline = started + timeout
            for item in c.stream(spec_text=SPEC_NVIDIA, timeout=timeout):
                if isinstance(item, NodeVerdict):
                    seen.append(item)
                    if len(seen) == 3:  # the three others answered; the victim cannot, it is stopped
                        assert "victim" not in {n.name for n in seen}
                        waited = time.monotonic() + 5
                        while unread_bytes(port).get(channel, 0) == 0 and time.monotonic() < waited:
                            time.sleep(0.01)
                        reached = unread_bytes(port)
                        assert reached.get(channel, 0) > 0, reached  # the request is in the victim's socket
                        victim.proc.kill()  # SIGKILL, mid-call
                else:
                    summary, summary_at = item, time.monotonic()
    finally:
        victim.kill()
    got = by_name(seen)
    assert set(got) == {"h100", "mi300", "vm", "victim"}
    assert got["victim"].status == "UNAVAILABLE", got["victim"]
    assert got["victim"].attempts == 2  # retried once, still gone
    assert got["h100"].compatible and got["h100"].status == "OK"
    assert got["vm"].status == "OK" and not got["vm"].compatible
    assert summary is not None and summary.failed == 1 and summary.compatible == 1
    # the kill was noticed and reported, not waited out: the summary came before the call's deadline
    assert summary_at < deadline


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_slow_daemon_is_deadline_exceeded_alone(fleet: Fleet, tmp_path: Path, tcp_proxy, transport: str) -> None:
    proxy: TcpProxy = tcp_proxy(fleet.by_name("h100").address, delay=5.0)
    extra = [{"name": "slow", "address": proxy.address}]
    path = nodes_file(fleet, tmp_path, extra)
    with (
        aggregator(nodes_file=str(path), node_timeout=1.0, fanout_transport=transport) as agg,
        FleetClient(agg.address) as client,
    ):
        answer = client.validate(spec_text=SPEC_ANY, timeout=20)
    got = by_name(answer.nodes)
    assert got["slow"].status == "DEADLINE_EXCEEDED" and got["slow"].attempts == 1
    assert [got[n].status for n in ("h100", "mi300", "vm")] == ["OK"] * 3
    assert answer.summary.failed == 1 and answer.summary.compatible == 3


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_summary_arrives_before_the_callers_own_deadline(
    fleet: Fleet, tmp_path: Path, tcp_proxy, transport: str,
) -> None:
    """No request timeout, a node timeout beyond the caller's gRPC deadline: the caller's deadline rules."""
    proxy: TcpProxy = tcp_proxy(fleet.by_name("vm").address, delay=30.0)
    extra = [{"name": "stuck", "address": proxy.address}]
    path = nodes_file(fleet, tmp_path, extra)
    with (
        aggregator(nodes_file=str(path), node_timeout=60.0, fanout_transport=transport) as agg,
        grpc.insecure_channel(agg.address) as ch,
    ):
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        items = list(stub.ValidateFleet(fleet_pb2.ValidateFleetRequest(spec=SPEC_ANY), timeout=3.0))
    # Had the aggregator been late, the call itself would have failed with DEADLINE_EXCEEDED above.
    # Live answers come one per message, or together when several arrived at once (`nodes`).
    results = [r for i in items for r in ([i.node] if i.WhichOneof("item") == "node" else i.nodes.nodes)]
    nodes = {r.node_name: r for r in results}
    assert items[-1].WhichOneof("item") == "summary"
    assert nodes["stuck"].status == "DEADLINE_EXCEEDED"
    assert {nodes[n].status for n in ("h100", "mi300", "vm")} == {"OK"}


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_concurrency_bound_leaves_queued_nodes_reported(
    fleet: Fleet, tmp_path: Path, tcp_proxy, transport: str,
) -> None:
    """One call at a time and a stuck first node: the others never get a turn, and are reported."""
    proxy: TcpProxy = tcp_proxy(fleet.by_name("vm").address, delay=30.0)
    extra = [{"name": "a-stuck", "address": proxy.address}]  # sorts first
    with (
        aggregator(nodes_file=str(nodes_file(fleet, tmp_path, extra)), concurrency=1, node_timeout=60.0,
                   fanout_transport=transport) as agg,
        FleetClient(agg.address) as client,
    ):
        answer = client.validate(spec_text=SPEC_ANY, timeout=1.5)
    got = by_name(answer.nodes)
    assert set(got) == {"a-stuck", "h100", "mi300", "vm"}
    assert got["a-stuck"].status == "DEADLINE_EXCEEDED" and got["a-stuck"].attempts == 1
    for name in ("h100", "mi300", "vm"):
        assert got[name].status == "DEADLINE_EXCEEDED" and got[name].attempts == 0, got[name]
        assert "turn" in got[name].error


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_channels_are_reused_between_calls(fleet: Fleet, tmp_path: Path, tcp_proxy, transport: str) -> None:
    proxy: TcpProxy = tcp_proxy(fleet.by_name("mi300").address)
    with aggregator(nodes_file=str(write_nodes_file(tmp_path / "n.json", [])), fanout_transport=transport) as agg:
        write_nodes_file(tmp_path / "n.json", [], extra=[{"name": "mi300", "address": proxy.address}])
        with FleetClient(agg.address) as client:
            for _ in range(3):
                assert client.validate(spec_text=SPEC_ANY, timeout=10).summary.compatible == 1
    assert proxy.accepted == 1  # one TCP connection for three fleet calls


def test_nodes_file_is_reread_when_it_changes(fleet: Fleet, tmp_path: Path) -> None:
    path = write_nodes_file(tmp_path / "nodes.json", fleet.nodes[:1])
    with aggregator(nodes_file=str(path)) as agg, FleetClient(agg.address) as client:
        assert [n.name for n in client.list_nodes()] == ["h100"]
        write_nodes_file(path, fleet.nodes, default_labels())
        assert sorted(n.name for n in client.list_nodes()) == ["h100", "mi300", "vm"]
        assert client.validate(spec_text=SPEC_ANY, timeout=10).summary.compatible == 3
        path.write_text("- {name: broken, address: no-port-here}\n")  # a bad edit keeps the last good list
        assert sorted(n.name for n in client.list_nodes()) == ["h100", "mi300", "vm"]
        assert "entry 0" in agg.inventory.file_error and "no-port-here" in agg.inventory.file_error
        path.write_text("[" * 200_000)  # hostile nesting: once a RecursionError, and every call UNKNOWN
        assert sorted(n.name for n in client.list_nodes()) == ["h100", "mi300", "vm"]
        assert client.validate(spec_text=SPEC_ANY, timeout=10).summary.compatible == 3
        assert "nesting deeper than" in agg.inventory.file_error


def test_dns_discovery_of_localhost(fleet: Fleet, tmp_path: Path) -> None:
    port = int(fleet.by_name("mi300").address.rsplit(":", 1)[1])
    import socket

    expected = {
        (f"[{a[4][0]}]:{port}" if a[0] == socket.AF_INET6 else f"{a[4][0]}:{port}")
        for a in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)
    }
    assert f"127.0.0.1:{port}" in expected
    with aggregator(dns=[("localhost", port)]) as agg, FleetClient(agg.address) as client:
        listed = client.list_nodes()
        assert {n.address for n in listed} == expected and {n.source for n in listed} == {"dns"}
        answer = client.validate(spec_text=SPEC_ANY, timeout=10)
        v4 = next(n for n in answer.nodes if n.address == f"127.0.0.1:{port}")
        assert v4.status == "OK" and v4.compatible and v4.name == "mi300"  # the daemon's own name, learnt
        assert any(n.name == "mi300" and n.health == "SERVING" for n in client.list_nodes())


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_list_nodes_reports_health(fleet: Fleet, tmp_path: Path, transport: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    path = nodes_file(fleet, tmp_path, [{"name": "dead", "address": dead}])
    with aggregator(nodes_file=str(path), fanout_transport=transport) as agg, FleetClient(agg.address) as client:
        listed = {n.name: n for n in client.list_nodes()}
    assert listed["dead"].health == "UNAVAILABLE"
    assert {listed[n].health for n in ("h100", "mi300", "vm")} == {"SERVING"}
    assert listed["h100"].source == "file" and listed["h100"].labels["gpu"] == "nvidia"
    assert listed["h100"].last_contact.endswith("Z")


def aggregator_at(address: str) -> AggregatorDaemon:
    d = AggregatorDaemon(AggregatorConfig(listen=address, lease_ttl=1.5, registration=OPEN_REGISTRATION))
    d.start()
    return d


def wait_listed(client: FleetClient, pred, what: str, timeout: float = 15.0) -> list[NodeEntry]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = client.list_nodes()
        if pred(nodes):
            return nodes
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen in {timeout}s: {client.list_nodes()}")


def test_registered_node_survives_aggregator_restart_and_lapses_when_killed(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    agg = aggregator_at(address)
    node = start_node(tmp_path, "edge1", "plain-vm", args=["--register", address, "--labels", "site=edge,tier=2"])

    def present(ns: list[NodeEntry]) -> bool:
        return any(n.name == "edge1" for n in ns)

    try:
        with FleetClient(address) as client:
            edge = next(n for n in wait_listed(client, present, "registration") if n.name == "edge1")
            assert edge.source == "registered" and edge.labels == {"site": "edge", "tier": "2"}
            assert edge.address == node.address
            answer = client.validate(spec_text=SPEC_ANY, timeout=10)
            assert [(n.name, n.status, n.compatible) for n in answer.nodes] == [("edge1", "OK", True)]
        agg.stop(grace=0)
        agg = aggregator_at(address)  # a restarted aggregator knows nothing until the next heartbeat
        with FleetClient(address) as client:
            wait_listed(client, present, "re-registration after the aggregator restarted")
            node.kill()  # SIGKILL: no deregistration, the lease must lapse
            wait_listed(client, lambda ns: not present(ns), "lease lapse")
    finally:
        node.kill()
        agg.stop(grace=0)


def test_cleanly_stopped_node_deregisters(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    agg = aggregator_at(address)
    agg.inventory.lease_ttl = 600.0  # only deregistration can remove it within the test
    node = start_node(tmp_path, "edge2", "plain-vm", args=["--register", address])
    try:
        with FleetClient(address) as client:
            wait_listed(client, lambda ns: [n.name for n in ns] == ["edge2"], "registration")
            assert node.terminate() == 0
            wait_listed(client, lambda ns: ns == [], "deregistration")
    finally:
        node.kill()
        agg.stop(grace=0)


def test_cli_validate_table_json_and_exit_codes(fleet: Fleet, tmp_path: Path) -> None:
    spec = tmp_path / "nvidia.yaml"
    spec.write_text(SPEC_NVIDIA)
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg:
        base = [
            *CLI,
            "fleet",
            "validate",
            "--aggregator",
            agg.address,
            "--spec",
            str(spec),
            "--timeout",
            "20",
        ]
        table = subprocess.run(base, capture_output=True, text=True, timeout=60)
        js = subprocess.run([*base, "-o", "json"], capture_output=True, text=True, timeout=60)
        none = subprocess.run([*base, "--selector", "zone=b"], capture_output=True, text=True, timeout=60)
        nodes = subprocess.run(
            [*CLI, "fleet", "nodes", "--aggregator", agg.address, "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "NODE", "ADDRESS"]
    assert lines[1].split()[1] == "h100" and "yes" in lines[1].split()
    assert "10de" in table.stdout  # why the others do not fit
    assert "1 of 3 node(s) fit" in table.stdout
    assert table.stderr == ""  # no progress bar when stderr is not a terminal
    doc = json.loads(js.stdout)
    assert js.returncode == 0 and doc["nodes"][0]["name"] == "h100"
    assert doc["summary"]["compatible"] == 1 and doc["summary"]["failed"] == 0
    assert none.returncode == 1 and "0 of 1 node(s) fit" in none.stdout
    assert nodes.returncode == 0 and len(json.loads(nodes.stdout)["nodes"]) == 3


def test_cli_draws_a_progress_bar_on_a_terminal_only(fleet: Fleet, tmp_path: Path) -> None:
    spec = tmp_path / "any.yaml"
    spec.write_text(SPEC_ANY)
    primary, secondary = os.openpty()
    try:
        with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg:
            run = subprocess.run(
                [*CLI, "fleet", "validate", "--aggregator", agg.address, "--spec", str(spec), "-o", "json"],
                stdout=subprocess.PIPE,
                stderr=secondary,
                timeout=60,
            )
        os.close(secondary)
        tty_bytes = b""
        with contextlib.suppress(OSError):  # EIO once the terminal is drained
            while chunk := os.read(primary, 4096):
                tty_bytes += chunk
    finally:
        os.close(primary)
    assert run.returncode == 0 and json.loads(run.stdout)["summary"]["compatible"] == 3
    assert b"] 3/3 nodes, 3 fit, 0 failed" in tty_bytes  # the bar, redrawn in place
    assert tty_bytes.endswith(b"\r\x1b[K")  # and erased before the JSON (on stdout) is printed


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC_ANY)
    down = subprocess.run(
        [*CLI, "fleet", "validate", "--aggregator", dead, "--spec", str(spec), "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    missing = subprocess.run(
        [*CLI, "fleet", "validate", "--aggregator", dead, "--spec", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    selector = subprocess.run(
        [*CLI, "fleet", "validate", "--aggregator", dead, "--spec", str(spec), "--selector", "novalue"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2 and "UNAVAILABLE" in down.stderr
    assert missing.returncode == 2 and "nope" in missing.stderr
    assert selector.returncode == 2 and "KEY=VALUE" in selector.stderr


def test_aggregator_cli_rejects_bad_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "nodes.yaml"
    bad.write_text("- {name: a, address: 'host:99999'}\n")
    r = subprocess.run(
        [*CLI, "aggregator", "--listen", f"127.0.0.1:{free_port()}", "--nodes-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "entry 0" in r.stderr and "port" in r.stderr
    r = subprocess.run(
        # --listen 127.0.0.1:0: the default port may be taken on this machine, and the listen address is checked first
        [*CLI, "aggregator", "--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "missing.crt" in r.stderr


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # AggregatorConfig.fanout_transport
def test_one_trace_per_fleet_call(fleet: Fleet, tmp_path: Path, transport: str) -> None:
    otlp = fleet.otlp
    agg = start_aggregator_process(
        tmp_path, "--nodes-file", str(nodes_file(fleet, tmp_path)), "--allowed-registries", "http://127.0.0.1:*",
        "--fanout-transport", transport, env=otlp.env("nodecompat-aggregator"),
    )
    try:
        otlp.clear()
        with FleetClient(agg.address) as client:
            assert client.validate(spec_text=SPEC_NVIDIA, timeout=20).summary.compatible == 1

        def complete(spans) -> bool:  # type: ignore[no-untyped-def]
            roots = [s for s in spans if s.name.endswith("FleetService/ValidateFleet") and s.kind == 2]
            if len(roots) != 1:
                return False
            mine = [s for s in spans if s.trace_id == roots[0].trace_id]  # not a late span of an earlier test
            servers = [s for s in mine if s.name.endswith("NodeService/ValidateImage") and s.kind == 2]
            evaluations = [s for s in mine if s.name == "evaluate spec"]
            return len(servers) >= 3 and len(evaluations) >= 3

        spans = otlp.wait_for(complete)
    finally:
        agg.terminate()
    root = next(s for s in spans if s.name.endswith("FleetService/ValidateFleet") and s.kind == 2)
    trace_spans = [s for s in spans if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in trace_spans}
    assert root.service == "nodecompat-aggregator" and root.parent_span_id == ""
    fleet_span = next(s for s in trace_spans if s.name == "fleet.validate")
    assert fleet_span.parent_span_id == root.span_id
    node_spans = [s for s in trace_spans if s.name.startswith("fleet.node ")]
    assert sorted(s.name for s in node_spans) == ["fleet.node h100", "fleet.node mi300", "fleet.node vm"]
    assert {s.parent_span_id for s in node_spans} == {fleet_span.span_id}
    daemon_servers = [s for s in trace_spans if s.name.endswith("NodeService/ValidateImage") and s.kind == 2]
    assert len(daemon_servers) == 3 and {s.service for s in daemon_servers} == {"nodecompat-node"}
    for server in daemon_servers:
        client_span = by_id[server.parent_span_id]  # the aggregator's CLIENT span of this node call
        assert client_span.kind == 3 and client_span.service == "nodecompat-aggregator"
        assert by_id[client_span.parent_span_id] in node_spans
    under_daemons = [s for s in trace_spans if s.parent_span_id in {d.span_id for d in daemon_servers}]
    assert under_daemons and all(s.service == "nodecompat-node" for s in under_daemons)
    for server in daemon_servers:  # each daemon's own work (node_service's "evaluate spec") is in the trace
        children = [s.name for s in under_daemons if s.parent_span_id == server.span_id]
        assert children.count("evaluate spec") == 1, children
    # every span of the call is in this one trace: nothing of it went to another trace id
    assert not [s for s in spans if s.trace_id != root.trace_id and "ValidateImage" in s.name]


@pytest.mark.registry
def test_registry_requests_are_traced_under_the_fleet_call(fleet: Fleet, tmp_path: Path, registry) -> None:
    """By --image, the aggregator resolves the artifact itself: its "registry GET" spans (oci/transport.py)
    are children of the call's fleet.validate span, in the call's one trace."""
    from support_registry import push_image, push_raw_artifact, subject_of

    image = push_image(registry.host, "fleet/traced", tmp_path)
    push_raw_artifact(registry.host, "fleet/traced", subject_of(image), layers=[SPEC_NVIDIA.encode()])
    otlp = fleet.otlp
    agg = start_aggregator_process(
        tmp_path, "--nodes-file", str(nodes_file(fleet, tmp_path)), "--allowed-registries", "http://127.0.0.1:*",
        env=otlp.env("nodecompat-aggregator"),
    )
    try:
        otlp.clear()
        with FleetClient(agg.address) as client:
            answer = client.validate(image=image.reference, plain_http=True, timeout=20)
        assert answer.summary.compatible == 1 and answer.summary.image_digest == image.digest

        def complete(spans) -> bool:  # type: ignore[no-untyped-def]
            roots = [s for s in spans if s.name.endswith("FleetService/ValidateFleet") and s.kind == 2]
            return len(roots) == 1 and any(s.name == "fleet.validate" for s in spans)

        spans = otlp.wait_for(complete)
    finally:
        agg.terminate()
    fleet_span = next(s for s in spans if s.name == "fleet.validate")
    registry_spans = [s for s in spans if s.name.startswith("registry ")]
    assert [s for s in registry_spans if s.name == "registry GET"], [s.name for s in spans]
    for s in registry_spans:
        assert s.trace_id == fleet_span.trace_id and s.parent_span_id == fleet_span.span_id, s
        assert s.service == "nodecompat-aggregator" and s.kind == 3  # CLIENT
    # the daemons got the spec inline: none of them talked to the registry
    assert not [s for s in registry_spans if s.service != "nodecompat-aggregator"]


@pytest.mark.registry
def test_image_is_resolved_once_per_call(fleet: Fleet, tmp_path: Path, registry) -> None:
    from support_registry import RegistryProxy, push_image, push_raw_artifact, subject_of

    from nodecompat.oci.cache import SpecCache

    image = push_image(registry.host, "fleet/app", tmp_path)
    push_raw_artifact(registry.host, "fleet/app", subject_of(image), layers=[SPEC_NVIDIA.encode()])

    class Counting(RegistryProxy):
        def handle(self, req) -> None:  # type: ignore[no-untyped-def]
            with self.lock:
                self.paths = [*getattr(self, "paths", []), f"{req.command} {req.path}"]
            super().handle(req)

    with Counting(registry.host) as proxy:
        ref = image.reference.replace(registry.host, proxy.host)
        SpecCache().fetch(ref, plain_http=True, timeout=20)  # what ONE resolution costs
        one_fetch, proxy.paths = sorted(proxy.paths), []
        with (
            aggregator(nodes_file=str(nodes_file(fleet, tmp_path)), registry=LOOPBACK_REGISTRIES) as agg,
            FleetClient(agg.address) as client,
        ):
            answer = client.validate(image=ref, plain_http=True, timeout=20)
            with pytest.raises(FleetCallError) as missing:
                client.validate(image=f"{proxy.host}/fleet/nothing:v1", plain_http=True, timeout=20)
            fleet_call = sorted(p for p in proxy.paths if "/fleet/app/" in p)
    got = by_name(answer.nodes)
    assert got["h100"].compatible and not got["vm"].compatible and answer.summary.failed == 0
    assert answer.summary.image_digest == image.digest
    assert answer.summary.artifact_digest.startswith("sha256:")
    # three nodes, one resolution: the daemons got the spec inline and never saw the registry
    assert fleet_call == one_fetch
    layer = "sha256:" + hashlib.sha256(SPEC_NVIDIA.encode()).hexdigest()
    assert [p for p in fleet_call if p.endswith(f"/blobs/{layer}")] == [f"GET /v2/fleet/app/blobs/{layer}"]
    assert missing.value.code == "NOT_FOUND"


def test_nfd_compat_reaches_the_daemons(fleet: Fleet, tmp_path: Path) -> None:
    """A spec with a field NFD ignores: refused strictly, evaluated on every node in NFD compatibility mode."""
    lenient = SPEC_ANY.replace("version: v1alpha1", "version: v1alpha1\nx-team: infra")
    with aggregator(nodes_file=str(nodes_file(fleet, tmp_path))) as agg, FleetClient(agg.address) as client:
        with pytest.raises(FleetCallError) as err:
            client.validate(spec_text=lenient, timeout=15)
        assert err.value.code == "INVALID_ARGUMENT" and "x-team" in err.value.message
        answer = client.validate(spec_text=lenient, timeout=15, nfd_compat=True)
    assert {n.name: n.status for n in answer.nodes} == {"h100": "OK", "mi300": "OK", "vm": "OK"}
    assert answer.summary.compatible == 3
