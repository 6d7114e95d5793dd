"""The inventory snapshot (`aggregator --state-file`, server/inventory/inventory_snapshot.py): real aggregator
processes stopped by SIGKILL (after a periodic write) and SIGTERM, real `serve --register` daemons on fixture
hosts (one behind a counting TCP proxy: a fetch or a health check is a connection), real clients. Restored nodes
are answered at once with their as_of, equal to the live verdicts, renew without a fetch, keep their principal,
and leave after their lease when their daemon is gone. Hostile files: the aggregator serves, empty or with the
entries that pass RegisterNode's checks."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port, stop_process
from support_fleet import SPEC_RANKED, Proc, aggregator, start_node, wait_until
from support_proxy import TcpProxy

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.features import Features
from nodecompat.fleet.fingerprint import canonical_bytes
from nodecompat.server.inventory.inventory_snapshot import collect
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, snapshot_pb2

pytest.importorskip("nodecompat.server.runtime.runtime", reason="the inventory needs the grpc.aio server runtime")

LEASE = "6"  # s: heartbeats every 2 s; a restored node not renewed within 6 s of the start leaves


@dataclass
class Setup:
    tmp: Path
    state: Path
    listen: str
    gpu: Proc  # behind `proxy`: its registered address is the proxy's
    proxy: TcpProxy
    vm: Proc


def _start_agg(s: Setup) -> Proc:
    """An aggregator process on s.listen (the daemons need the same address across restarts)."""
    port = s.listen.rpartition(":")[2]
    cmd_args = ["--state-file", str(s.state), "--lease-ttl", LEASE, "--max-heartbeats-per-second", "0",
                "--allow-unauthenticated-registration", "--heartbeat", "1"]
    log = s.tmp / f"aggregator-{port}-{secrets.token_hex(3)}.log"
    p = Proc("aggregator", subprocess.Popen(
        [sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen", s.listen, *cmd_args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT), s.listen, log)
    return p.wait_serving()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("snapshot")
    listen = f"127.0.0.1:{free_port()}"
    gpu_listen = f"127.0.0.1:{free_port()}"
    proxy = TcpProxy(gpu_listen)
    gpu = start_node(tmp, "snap-gpu", "h100-server", listen=gpu_listen, wait=False,
                     args=["--register", listen, "--advertise", proxy.address])
    vm = start_node(tmp, "snap-vm", "plain-vm", wait=False, args=["--register", listen])
    try:
        yield Setup(tmp, tmp / "inventory.state", listen, gpu, proxy, vm)
    finally:
        gpu.kill()
        vm.kill()
        proxy.close()


def _answer(address: str, live: bool = False) -> dict[str, tuple[bool, list[str], str, str]]:
    with FleetClient(address) as c:
        got = c.validate(spec_text=SPEC_RANKED, live=live)
    return {n.name: (n.compatible, n.reasons, n.as_of, n.source) for n in got.nodes}


def _written(state: Path) -> set[str]:
    snap = snapshot_pb2.InventorySnapshot()
    try:
        snap.ParseFromString(state.read_bytes())
    except (OSError, Exception):
        return set()
    return {n.name for n in snap.nodes if n.fingerprint}


def test_restarts_answer_at_once_renew_without_a_fetch_and_forget_the_gone(setup: Setup) -> None:
    s = setup
    agg = _start_agg(s)
    try:
        s.gpu.wait_serving()
        s.vm.wait_serving()
        wait_until(lambda: {k for k, v in _answer(s.listen).items() if v[3] == "INVENTORY"} == {"snap-gpu", "snap-vm"},
                   60, "both registered nodes in the inventory")
        before = _answer(s.listen)
        wait_until(lambda: _written(s.state) == {"snap-gpu", "snap-vm"}, 30, "a periodic write of both")
        assert os.stat(s.state).st_mode & 0o777 == 0o600
        agg.proc.send_signal(signal.SIGKILL)  # after a periodic write: no final write
        agg.proc.wait()
        agg = _start_agg(s)
        restored = _answer(s.listen)  # from the snapshot, whether or not a daemon beat already
        assert restored == before, (restored, before)
        live = _answer(s.listen, live=True)
        assert {k: v[:2] for k, v in live.items()} == {k: v[:2] for k, v in restored.items()}
        # SIGTERM writes on the way out; the vm daemon is gone meanwhile
        assert agg.terminate() == 0
        s.vm.kill()
        accepted = s.proxy.accepted  # the gpu node's connections so far (fetch, health check, the live call)
        agg = _start_agg(s)
        assert _answer(s.listen) == before
        # the gone daemon's node leaves once its restored lease lapses; the gpu node's lease, restored at the same
        # time with the same ttl, was renewed by its daemon meanwhile: without a fetch or a first health check
        wait_until(lambda: set(_answer(s.listen)) == {"snap-gpu"}, 30, "the vm node left after its lease")
        assert s.proxy.accepted == accepted, "the restored node was dialled"
        text = agg.log.read_text()
        assert "2 registered node(s) and 2 feature set(s) held again" in text, text
        assert "left the fleet: lease lapsed" in text, text
        # another principal cannot renew the restored (and renewed) lease
        req = fleet_pb2.RegisterNodeRequest(name="snap-gpu", address=s.proxy.address)
        with grpc.insecure_channel(s.listen) as ch, pytest.raises(grpc.RpcError) as err:
            fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
                req, timeout=10, metadata=[(LEASE_KEY_METADATA, secrets.token_hex(32))])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
    finally:
        agg.kill()


# -- hostile files: an in-process aggregator reading them -------------------------------------------------------
def _set(value: str) -> tuple[str, bytes]:
    f = Features()
    f.add_attributes("kernel.version", {"major": value})
    raw = canonical_bytes(f)
    return "sha256:" + hashlib.sha256(raw).hexdigest(), raw


def _snap(nodes: list[dict[str, object]], sets: list[tuple[str, bytes]]) -> bytes:
    snap = snapshot_pb2.InventorySnapshot(version=1)
    for fp, raw in sets:
        snap.sets.add(fingerprint=fp, canonical=raw)
    for n in nodes:
        entry = snap.nodes.add(name=str(n["name"]), address=str(n["address"]), fingerprint=str(n.get("fp", "")),
                               principal="key:x", lease_ttl_seconds=60, round_id=1)
        entry.labels.update(n.get("labels", {}))  # type: ignore[arg-type]
        entry.probed_at.seconds = int(n.get("probed", 1_700_000_000))  # type: ignore[call-overload]
    return snap.SerializeToString()


def _held(state: Path, caplog: pytest.LogCaptureFixture, **kw: object) -> dict[str, float]:
    """Start an aggregator on `state`; {name: probe time} of the nodes it holds."""
    caplog.set_level(logging.INFO, logger="nodecompat.server.inventory.inventory_snapshot")
    with aggregator(state_file=str(state), registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(), check_new_nodes=False, **kw) as agg:
        assert agg.store is not None
        names = {n.name for n in agg.inventory.nodes()}
        return {r.name: r.probed_at for r in agg.store.records() if r.name in names}


GOOD, OTHER = _set("6"), _set("5")


@pytest.mark.parametrize("mangle", ["truncated", "random", "oversized", "directory", "symlink", "fifo"])
def test_an_unreadable_file_starts_empty_and_serves(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    mangle: str) -> None:
    state = tmp_path / "state"
    data = _snap([{"name": f"n{i}", "address": f"127.0.0.{i + 1}:7000", "fp": GOOD[0]} for i in range(50)], [GOOD])
    kw: dict[str, object] = {}
    if mangle == "truncated":
        state.write_bytes(data[: len(data) // 2])
    elif mangle == "random":
        state.write_bytes(os.urandom(4096))
    elif mangle == "oversized":
        state.write_bytes(data)
        kw["state_max_bytes"] = len(data) - 1
    elif mangle == "symlink":  # a link planted at PATH is not followed (to a good snapshot here), and says so
        (tmp_path / "elsewhere").write_bytes(data)
        state.symlink_to(tmp_path / "elsewhere")
    elif mangle == "fifo":  # nothing writes to it: a read that waited would never end
        os.mkfifo(state)
    else:
        state.mkdir()
    assert _held(state, caplog, **kw) == {}
    assert "starting with an empty inventory" in caplog.text
    if mangle == "symlink":
        assert "is a symbolic link (not followed" in caplog.text


def test_entries_failing_the_registration_rules_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    forged = (OTHER[0], GOOD[1])  # a set whose fingerprint is not its contents'
    nodes: list[dict[str, object]] = [
        {"name": "good", "address": "127.0.0.1:7000", "fp": GOOD[0]},
        {"name": "future", "address": "127.0.0.2:7000", "fp": GOOD[0], "probed": 4_000_000_000},
        {"name": "forged", "address": "127.0.0.3:7000", "fp": OTHER[0]},
        {"name": "bad name\n", "address": "127.0.0.4:7000", "fp": GOOD[0]},
        {"name": "wild", "address": "0.0.0.0:7000", "fp": GOOD[0]},
        {"name": "labels", "address": "127.0.0.5:7000", "fp": GOOD[0], "labels": {"bad key": "v"}},
        {"name": "badfp", "address": "127.0.0.6:7000", "fp": "sha256:xyz"},
        {"name": "dup", "address": "127.0.0.1:7000", "fp": GOOD[0]},  # the good one's address
    ]
    state.write_bytes(_snap(nodes, [GOOD, forged]))
    t0 = time.time()
    held = _held(state, caplog)
    assert set(held) == {"good", "future"}
    assert held["good"] == 1_700_000_000
    assert t0 <= held["future"] <= time.time()  # a probe time later than now is stored as now
    for why in ("fingerprint does not match", "wildcard host", "fingerprint must be", "is held by registered node",
                "label key", "name must be"):
        assert why in caplog.text, why


def test_more_nodes_than_max_registrations_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.write_bytes(_snap([{"name": f"n{i}", "address": f"127.0.1.{i + 1}:7000", "fp": GOOD[0]} for i in range(20)],
                            [GOOD]))
    assert len(_held(state, caplog, max_registrations=5)) == 5
    assert "15 entries dropped" in caplog.text


def test_a_file_of_a_million_tiny_entries_is_read_only_up_to_its_bound(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Hostile counts under the byte limit: 1,000,000 empty node entries (2 bytes each, ~150 once parsed) were
    all parsed and checked before serving (~6 s and ~200 MB; at 64 MiB ~5 GB). Only the first twice
    --max-registrations fields are looked at: the work dropped is bounded by the limit, not the file."""
    state = tmp_path / "state"
    good = _snap([{"name": f"n{i}", "address": f"127.0.3.{i + 1}:7000", "fp": GOOD[0]} for i in range(3)], [GOOD])
    state.write_bytes(good + b"\x22\x00" * 1_000_000)
    assert len(_held(state, caplog, max_registrations=5)) == 3  # the real entries first are still held
    assert "(more sets or nodes than twice --max-registrations plus the nodes file's and DNS's nodes): not read" \
        in caplog.text
    dropped = [line for line in caplog.text.splitlines() if "dropped:" in line]
    assert sum(int(line.split(" entr")[0].rsplit(" ", 1)[1]) for line in dropped) <= 4 * 5 + 16 + 1


def test_an_aggregator_writes_what_it_holds_and_reads_it_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """collect() of a loaded inventory equals the file it loaded (nodes, sets, principals)."""
    state = tmp_path / "state"
    data = _snap([{"name": f"n{i}", "address": f"127.0.2.{i + 1}:7000", "fp": (GOOD, OTHER)[i % 2][0],
                   "labels": {"rack": str(i)}} for i in range(6)], [GOOD, OTHER])
    state.write_bytes(data)
    with aggregator(state_file=str(state), registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(), check_new_nodes=False) as agg:
        snap = collect(agg.inventory, agg.store)
    want = snapshot_pb2.InventorySnapshot.FromString(data)
    assert sorted((n.name, n.address, n.fingerprint, dict(n.labels), n.principal, n.probed_at.seconds)
                  for n in snap.nodes) == sorted(
        (n.name, n.address, n.fingerprint, dict(n.labels), n.principal, n.probed_at.seconds) for n in want.nodes)
    assert {s.fingerprint: s.canonical for s in snap.sets} == {s.fingerprint: s.canonical for s in want.sets}


def test_state_file_with_etcd_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen",
                        f"127.0.0.1:{free_port()}", "--state-file", str(tmp_path / "s"), "--store",
                        "etcd://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--state-file is for one aggregator" in r.stderr, r.stderr


def test_the_systemd_unit_keeps_the_snapshot_in_its_state_directory() -> None:
    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config

    unit = (Path(__file__).resolve().parents[1] / "deploy/systemd/nodecompat-aggregator.service").read_text()
    keys = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["StateDirectory"] == "nodecompat-aggregator" and keys["DynamicUser"] == "yes"
    state_dir = "/tmp"  # what systemd sets STATE_DIRECTORY to, here an existing directory
    argv = keys["ExecStart"].replace("${STATE_DIRECTORY}", state_dir).replace(
        "$NODECOMPAT_ARGS", keys["Environment"].removeprefix("NODECOMPAT_ARGS=")).split()
    assert argv[:2] == ["/usr/local/bin/nodecompat", "aggregator"]
    config = build_config(build_parser().parse_args(argv[1:]))
    assert config.state_file == f"{state_dir}/inventory.state"


def test_a_snapshot_over_the_limit_is_not_written_and_health_says_so(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from nodecompat.server.inventory.inventory_snapshot import STATE_HEALTH

    state = tmp_path / "state"

    def status(address: str) -> int:
        with grpc.insecure_channel(address) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=STATE_HEALTH),
                                                        timeout=10).status

    with aggregator(state_file=str(state), state_max_bytes=200, registration=RegistrationPolicy(
            allow_unauthenticated=True), sync=SyncConfig(), check_new_nodes=False) as agg:
        address = agg.address  # type: ignore[attr-defined]
        assert agg.state is not None and status(address) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(address) as ch:
            for i in range(4):  # leases only (no fingerprint): ~60 bytes each in the snapshot
                fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(fleet_pb2.RegisterNodeRequest(
                    name=f"big-{i}", address=f"127.0.3.{i + 1}:7000", labels={"rack": "r" * 40}), timeout=10,
                    metadata=[(LEASE_KEY_METADATA, secrets.token_hex(32))])
        assert not agg.state.write_now()
        assert not state.exists() and "over --state-max-mib" in agg.state.problem
        assert "over --state-max-mib" in caplog.text
        wait_until(lambda: status(address) == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "NOT_SERVING")
        agg.state.max_bytes = 1 << 20  # the operator's larger limit: the next write goes through
        assert agg.state.write_now() and state.exists()
        wait_until(lambda: status(address) == health_pb2.HealthCheckResponse.SERVING, 10, "SERVING again")


def test_one_aggregator_per_state_file_and_a_crashed_write_leaves_nothing(tmp_path: Path) -> None:
    """A crash (SIGKILL, power) during a write left its `.NAME.XXXX.tmp` (up to --state-max-mib each) beside
    the file forever; two aggregators given one --state-file each overwrote the other's inventory every 5 s
    and a restart held whichever wrote last. Now the first claims the file and cleans up, the second refuses
    to start and says why."""
    state = tmp_path / "state"
    left = tmp_path / ".state.k3x9q2ab.tmp"  # what mkstemp named a write a crash interrupted
    left.write_bytes(b"\0" * 4096)
    other = tmp_path / ".other.k3x9q2ab.tmp"  # another file's: not ours to remove
    other.write_bytes(b"x")
    cmd = [sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--state-file", str(state),
           "--allow-unauthenticated-registration"]
    first_listen = f"127.0.0.1:{free_port()}"
    log = tmp_path / "first.log"
    first = Proc("aggregator", subprocess.Popen([*cmd, "--listen", first_listen], stdout=log.open("wb"),
                                                stderr=subprocess.STDOUT), first_listen, log)
    try:
        first.wait_serving()
        assert not left.exists() and other.exists()
        assert "removed 1 temporary file(s) left by an interrupted write" in log.read_text()
        second = subprocess.run([*cmd, "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                                timeout=60)
        assert second.returncode != 0
        assert "another aggregator uses it" in second.stderr and str(state) in second.stderr
    finally:
        first.terminate()
    again = subprocess.Popen([*cmd, "--listen", first_listen], stdout=(tmp_path / "again.log").open("wb"),
                             stderr=subprocess.STDOUT)
    try:  # the lock ends with its process: a restart claims the file again
        Proc("aggregator", again, first_listen, tmp_path / "again.log").wait_serving()
    finally:
        stop_process(again, 10)


def test_a_lease_table_change_that_keeps_the_count_is_written(tmp_path: Path) -> None:
    """The writer wrote when the feature store's generation or the number of leases changed: a lease-only node
    leaving while another registered (or one moving or changing its labels) within one interval changed
    neither, so the snapshot kept the old lease table until something else changed (a restart then held the
    node that had left and not the one that came)."""
    state = tmp_path / "state"

    def held() -> dict[str, tuple[str, dict[str, str]]]:
        snap = snapshot_pb2.InventorySnapshot.FromString(state.read_bytes())
        return {n.name: (n.address, dict(n.labels)) for n in snap.nodes}

    with aggregator(state_file=str(state), state_interval=3600, registration=RegistrationPolicy(
            allow_unauthenticated=True), sync=SyncConfig(), check_new_nodes=False) as agg:
        assert agg.state is not None
        key = [(LEASE_KEY_METADATA, secrets.token_hex(32))]
        with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
            stub = fleet_pb2_grpc.FleetServiceStub(ch)

            def register(name: str, address: str, rack: str) -> None:
                stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name=name, address=address, labels={"rack": rack}),
                                  timeout=10, metadata=key)

            register("a", "127.0.4.1:7000", "1")
            assert agg.state.write_now() and held() == {"a": ("127.0.4.1:7000", {"rack": "1"})}
            stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name="a"), timeout=10, metadata=key)
            register("b", "127.0.4.2:7000", "1")
            assert agg.state.write_now() and held() == {"b": ("127.0.4.2:7000", {"rack": "1"})}
            register("b", "127.0.4.3:7000", "2")  # moved, relabelled
            assert agg.state.write_now() and held() == {"b": ("127.0.4.3:7000", {"rack": "2"})}
            register("b", "127.0.4.3:7000", "2")  # a renewal: nothing to write
            assert not agg.state.write_now()


def test_a_stopped_aggregator_gives_the_state_file_up(tmp_path: Path) -> None:
    """The claim's flock was kept until the process ended, so an aggregator stopped in a process (an embedding
    program, `make bench`'s push rows) kept every later aggregator from the file: the bench's restart row read
    "0/10000 held" because its aggregator exited with 'another aggregator uses it'. stop() writes, then releases;
    while the first runs, the second still refuses."""
    state = tmp_path / "state"
    kw: dict[str, object] = {"state_file": str(state), "registration": RegistrationPolicy(allow_unauthenticated=True),
                             "sync": SyncConfig(), "check_new_nodes": False}
    with aggregator(**kw) as first:  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="another aggregator uses it"), aggregator(**kw):  # type: ignore[arg-type]
            pass
        with grpc.insecure_channel(first.address) as ch:  # type: ignore[attr-defined]
            fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(fleet_pb2.RegisterNodeRequest(
                name="kept", address="127.0.2.9:7000", ttl_seconds=60), timeout=10)
    with aggregator(**kw) as second:  # type: ignore[arg-type]
        assert [n.name for n in collect(second.inventory, second.store).nodes] == ["kept"]  # type: ignore[attr-defined]
        second.inventory.deregister("kept", "anonymous")  # the second's inventory now differs from the first's
        assert second.state.write_now()  # type: ignore[union-attr]
        mine = state.read_bytes()
        # the first gave the file up: a late write of its (stale) inventory would overwrite the second's
        assert not first.state.write_now(force=True) and "given up" in first.state.problem  # type: ignore[union-attr]
        assert state.read_bytes() == mine
