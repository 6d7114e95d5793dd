"""Issue 8 item 5: floods within the caps. Label caps per registration, ListNodes in pages as the fleet
grows (the CLI follows them), refresh=true coalesced, idle connections closed, the open-file soft limit
raised at start; Health (asked with its own 1 s deadline) answers throughout.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port, health_status, start_daemon
from support_dos import HealthProbe, codes
from support_fleet import host_root, start_aggregator_process

from nodecompat.server.fleet.list_pages import MAX_PAGE_SIZE, decode_token, encode_token, page_size
from nodecompat.server.inventory.fleet_nodes import MAX_LABEL_BYTES
from nodecompat.server.node.feature_cache import REFRESH_BURST
from nodecompat.v1 import features_pb2, fleet_pb2, fleet_pb2_grpc, node_pb2_grpc

CLI = [sys.executable, "-m", "nodecompat.clients.cli"]
IDLE = 6  # s: --max-connection-idle of the daemon holding 1,100 idle connections
ROOT = Path(__file__).resolve().parents[1]


def test_a_registration_over_the_label_bytes_cap_is_invalid_argument(tmp_path: Path) -> None:
    agg = start_aggregator_process(tmp_path, "--allow-unauthenticated-registration")
    try:
        with grpc.insecure_channel(agg.address) as ch:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)
            # the reproducer: 64 labels of ~300-byte keys and values
            labels = {f"example.com/{'k' * 280}{i:02d}": "v" * 250 for i in range(64)}
            with pytest.raises(grpc.RpcError) as err:
                stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="n", address="127.0.0.1:9", labels=labels),
                                  timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"over the limit of {MAX_LABEL_BYTES}" in (err.value.details() or "")
            small = {f"k{i}": "v" * 40 for i in range(16)}
            stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name="n", address="127.0.0.1:9", labels=small), timeout=10)
    finally:
        assert agg.terminate() == 0


def test_a_registration_flood_is_listed_in_pages_and_health_answers(tmp_path: Path) -> None:
    n = 3000
    agg = start_aggregator_process(tmp_path, "--allow-unauthenticated-registration", "--lease-ttl", "600",
                                   "--max-concurrent-calls", "256")
    try:
        labels = {f"example.com/label-{i}": "x" * 60 for i in range(40)}  # ~3.5 KB: just under the cap
        with grpc.insecure_channel(agg.address) as ch, HealthProbe(agg.address) as probe:
            stub = fleet_pb2_grpc.FleetServiceStub(ch)
            got: list[grpc.StatusCode] = []
            for start in range(0, n, 500):  # 500 in flight at a time
                futures = [
                    stub.RegisterNode.future(fleet_pb2.RegisterNodeRequest(
                        name=f"n{i:05d}", address=f"127.0.{i // 250}.{1 + i % 250}:9", labels=labels,
                        ttl_seconds=600), timeout=60)
                    for i in range(start, min(n, start + 500))
                ]
                got.extend(codes(futures))
            assert set(got) == {grpc.StatusCode.OK}, set(got)
            first = stub.ListNodes(fleet_pb2.ListNodesRequest(page_size=100), timeout=60)
            assert len(first.nodes) == 100 and first.next_page_token
            assert [x.name for x in first.nodes] == [f"n{i:05d}" for i in range(100)]
            big = stub.ListNodes(fleet_pb2.ListNodesRequest(page_size=10**6), timeout=60)
            assert len(big.nodes) == MAX_PAGE_SIZE
            with pytest.raises(grpc.RpcError) as err:
                stub.ListNodes(fleet_pb2.ListNodesRequest(page_token="not-a-token"), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "pass next_page_token as given" in (err.value.details() or "")
        assert probe.answers and set(probe.answers) == {"SERVING"}, probe.answers
        # the CLI follows the pages: every node, once
        out = subprocess.run([*CLI, "fleet", "nodes", "--aggregator", agg.address, "-o", "json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        names = [e["name"] for e in json.loads(out.stdout)["nodes"]]
        assert len(names) == n and len(set(names)) == n
    finally:
        assert agg.terminate() == 0


def test_page_tokens_round_trip_and_bad_sizes_are_refused() -> None:
    assert decode_token(encode_token(("a", "h:1"))) == ("a", "h:1")
    assert decode_token("") is None
    assert page_size(0) == 500 and page_size(7) == 7 and page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    with pytest.raises(ValueError, match="page_size must be >= 0"):
        page_size(-1)


def test_refresh_true_is_coalesced_within_the_minimum_interval(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--host-root", str(host_root("plain-vm")), "--min-refresh-interval", "3600")
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            req = features_pb2.GetFeaturesRequest(refresh=True, prefixes=["kernel.version"])
            stamps = {stub.GetFeatures(req, timeout=30).probed_at.ToJsonString() for _ in range(50)}
        # 50 refresh calls in a row: REFRESH_BURST rounds, then the last one is answered
        assert len(stamps) == REFRESH_BURST, stamps
    finally:
        assert d.terminate() == 0
    d = start_daemon(tmp_path, "--host-root", str(host_root("plain-vm")), "--min-refresh-interval", "0")
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            req = features_pb2.GetFeaturesRequest(refresh=True, prefixes=["kernel.version"])
            stamps = {stub.GetFeatures(req, timeout=30).probed_at.ToJsonString() for _ in range(3)}
        assert len(stamps) == 3, stamps  # 0 turns coalescing off: every call probes
    finally:
        assert d.terminate() == 0


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/PID/limits")


def test_idle_connections_under_a_1024_file_limit_neither_block_new_clients_nor_stay(tmp_path: Path) -> None:
    """The reproducer: 1,100 idle connections against a daemon started with a soft limit of 1,024. IDLE (6 s)
    is the daemon's --max-connection-idle: over twice the ~2.3 s the 1,100 connections take to open on a
    loaded 2-core machine, so all are open at once before the first is closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit ({hard}) is too low to raise past 1,024")
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard) if hard != resource.RLIM_INFINITY else 8192, hard))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "daemon.log").open("w")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    proc = subprocess.Popen([*CLI, "serve", "--listen", address, "--host-root", str(host_root("plain-vm")),
                             "--no-hotplug", "--max-connection-idle", str(IDLE)],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=low_limit)
    channels: list[grpc.Channel] = []
    try:
        end = time.monotonic() + 30
        while health_status(address) != "SERVING":
            assert time.monotonic() < end and proc.poll() is None, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        assert _soft_nofile(proc.pid) > 1024  # raised to the hard limit at start
        baseline = _fds(proc.pid)

        def connect(_i: int) -> grpc.Channel:
            ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            grpc.channel_ready_future(ch).result(timeout=30)
            return ch

        with ThreadPoolExecutor(8) as pool:
            channels.extend(pool.map(connect, range(1100)))
        assert _fds(proc.pid) > 1024  # more connections open on the daemon than its old soft limit
        assert health_status(address, timeout=1.0) == "SERVING"  # a new client still gets in
        end = time.monotonic() + 60  # idle for --max-connection-idle IDLE s: the daemon closes them
        while _fds(proc.pid) > baseline + 50 and time.monotonic() < end:
            time.sleep(0.5)
        assert _fds(proc.pid) <= baseline + 50, "idle connections were not closed"
    finally:
        for ch in channels:
            ch.close()
        proc.terminate()
        proc.wait(20)


def test_the_systemd_unit_sets_limit_nofile() -> None:
    unit = (ROOT / "deploy/systemd/nodecompat-node.service").read_text()
    assert any(line.startswith("LimitNOFILE=") and int(line.split("=")[1]) >= 4096 for line in unit.splitlines())


