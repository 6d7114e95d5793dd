"""Issue 12 end to end: real daemons on copies of fixture hosts behind a real aggregator with its live
inventory. Inventory answers equal live answers; identical hosts share one stored feature set; why-not
counts are exact on a hand-counted fleet; changing a host and refreshing makes WatchFleet emit the
transition with its reason; a killed daemon becomes UNREACHABLE and a stopped one STALE; grpcurl lists
and calls the new RPCs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

import grpc
import pytest
from support_cli import features_snapshot, fleet_validate_why_not
from support_fleet import Proc, aggregator, start_node
from support_fleet import wait_until as _wait
from support_fleetmem import GPU_SPEC, NVIDIA_ONLY, load_module, unload_module
from support_hosts import copy_fixture

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.v1 import features_pb2, fleet_pb2, fleet_pb2_grpc, inventory_pb2, node_pb2_grpc

# The daemon serves WatchFeatures as a coroutine stream: it needs the grpc.aio server runtime (issue 8's
# server/runtime/runtime.py); on the thread-pool server the stream cannot run, so these tests wait for it.
pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
STALE_AFTER = 3.0
# name -> fixture host; gpu-1/gpu-2/gpu-3 and vm-1/vm-2 are copies of the same host
HOSTS = {"gpu-1": "h100-server", "gpu-2": "h100-server", "gpu-3": "h100-server", "mi-1": "amd-mi300",
         "vm-1": "plain-vm", "vm-2": "plain-vm"}


@dataclass
class InvFleet:
    nodes: dict[str, Proc]
    roots: dict[str, Path]
    agg: AggregatorDaemon
    address: str
    tmp: Path


def _synced(agg: AggregatorDaemon, n: int) -> bool:
    assert agg.store is not None
    recs = agg.store.records()
    return len(recs) == n and all(r.has_features and r.state == "OK" for r in recs)


@pytest.fixture(scope="module", params=["grpc", "h2"])  # SyncConfig.watch_transport: every test with both
def inv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InvFleet]:
    tmp = tmp_path_factory.mktemp("inventory")
    roots = {name: Path(copy_fixture(host, tmp / name).root) for name, host in HOSTS.items()}
    procs = {name: start_node(tmp, name, HOSTS[name], root=roots[name], wait=False) for name in HOSTS}
    try:
        for p in procs.values():
            p.wait_serving()
        nodes_file = tmp / "nodes.yaml"
        nodes_file.write_text(json.dumps([{"name": n, "address": p.address, "labels": {"host": HOSTS[n]}}
                                          for n, p in procs.items()]))
        with aggregator(nodes_file=str(nodes_file),
                        sync=SyncConfig(heartbeat=1.0, stale_after=STALE_AFTER, reconcile_interval=0.2,
                                        watch_transport=request.param)) as agg:
            _wait(lambda: _synced(agg, len(HOSTS)), what="every node in the inventory")
            yield InvFleet(procs, roots, agg, agg.address, tmp)  # type: ignore[attr-defined]
    finally:
        for p in procs.values():
            p.kill()


def _answers(address: str, spec: str, live: bool) -> tuple[dict[str, tuple[bool, int, tuple[str, ...], str]], object]:
    with FleetClient(address) as c:
        a = c.validate(spec_text=spec, live=live, timeout=20)
    return {n.name: (n.compatible, n.score, tuple(n.reasons), n.status) for n in a.nodes}, a


def test_inventory_verdicts_equal_live_verdicts(inv: InvFleet) -> None:
    for spec in (GPU_SPEC, NVIDIA_ONLY):
        from_inventory, a = _answers(inv.address, spec, live=False)
        live, b = _answers(inv.address, spec, live=True)
        assert from_inventory == live
        assert {n.source for n in a.nodes} == {"INVENTORY"} and all(n.as_of for n in a.nodes)  # type: ignore[attr-defined]
        assert {n.source for n in b.nodes} == {"LIVE"}  # type: ignore[attr-defined]
        assert (a.summary.from_inventory, a.summary.live) == (6, 0)  # type: ignore[attr-defined]
        assert (b.summary.from_inventory, b.summary.live) == (0, 6)  # type: ignore[attr-defined]
        assert a.summary.why_not == b.summary.why_not  # type: ignore[attr-defined]
    assert sorted(n for n, v in from_inventory.items() if v[0]) == ["gpu-1", "gpu-2", "gpu-3"]


def _raw(address: str, spec: str, grouped: bool) -> list[fleet_pb2.ValidateFleetResponse]:
    with grpc.insecure_channel(address) as ch:
        req = fleet_pb2.ValidateFleetRequest(spec=spec, timeout_seconds=20, grouped_results=grouped)
        return list(fleet_pb2_grpc.FleetServiceStub(ch).ValidateFleet(req, timeout=30))


def test_grouped_answers_carry_the_same_results_as_per_node_answers(inv: InvFleet) -> None:
    """grouped_results (additive, fleet.proto) only changes the form: expanded, every node's NodeResult is the
    one a caller without the field gets; the summary is the same but for the ranking, which is left out."""
    from nodecompat.server.inventory.inventory_answers import expand_groups

    for spec in (GPU_SPEC, NVIDIA_ONLY):
        old = _raw(inv.address, spec, grouped=False)  # a caller that does not know the field
        new = _raw(inv.address, spec, grouped=True)
        assert {m.WhichOneof("item") for m in old} == {"nodes", "summary"}
        assert {m.WhichOneof("item") for m in new} == {"groups", "summary"}
        per_node = sorted((r for m in old if m.HasField("nodes") for r in m.nodes.nodes), key=lambda r: r.address)
        expanded = sorted((r for m in new if m.HasField("groups") for r in expand_groups(m.groups)),
                          key=lambda r: r.address)
        assert len(per_node) == len(HOSTS)
        assert [r.SerializeToString(deterministic=True) for r in expanded] == [
            r.SerializeToString(deterministic=True) for r in per_node]
        groups = [g for m in new if m.HasField("groups") for g in m.groups.groups]
        assert len(groups) < len(HOSTS)  # the h100 copies (and the vm copies) share one group
        s_old, s_new = old[-1].summary, new[-1].summary
        assert len(s_old.ranking) == len(HOSTS) and not s_new.ranking
        s_old.ClearField("ranking")
        s_old.ClearField("wall_seconds")
        s_new.ClearField("wall_seconds")
        assert s_old == s_new
        # FleetClient asks for groups and gives the same answer as from per-node results, ranking included
        _, a = _answers(inv.address, spec, live=False)
        from nodecompat.clients.fleet_client import FleetAnswer, FleetSummary, NodeVerdict

        b = FleetAnswer([NodeVerdict.from_proto(r) for r in per_node], FleetSummary.from_proto(_raw(
            inv.address, spec, grouped=False)[-1].summary))
        assert [n.__dict__ for n in a.ranked()] == [n.__dict__ for n in b.ranked()]  # type: ignore[attr-defined]
        assert a.summary.ranking == b.summary.ranking  # type: ignore[attr-defined]


def test_max_staleness_sends_older_inventory_entries_live(inv: InvFleet) -> None:
    """Nodes whose inventory features are older than the request's max_staleness are asked live, the others
    answered from the inventory, in one call; the answers are the same either way."""
    with FleetClient(inv.address) as c:
        a = c.validate(spec_text=NVIDIA_ONLY, timeout=20)
        assert {n.source for n in a.nodes} == {"INVENTORY"}  # type: ignore[attr-defined]
        b = c.validate(spec_text=NVIDIA_ONLY, timeout=20, max_staleness=1e-3)  # every probe round is older
        assert {n.source for n in b.nodes} == {"LIVE"} and (b.summary.live, b.summary.from_inventory) == (6, 0)  # type: ignore[attr-defined]
        assert {n.name: n.compatible for n in a.nodes} == {n.name: n.compatible for n in b.nodes}
        store = inv.agg.store
        assert store is not None
        # let the other nodes' rounds age (3 s at least, what a fixed 3 s sleep gave), then give gpu-1 a
        # fresh one; rounds made before this test started may be that old already
        _wait(lambda: all(time.time() - r.probed_at >= 3.0 for r in store.records() if r.name != "gpu-1"),
              what="the other nodes' rounds 3 s old")
        before = store.get(inv.nodes["gpu-1"].address)
        assert before is not None
        _refresh(inv.nodes["gpu-1"])
        _wait(lambda: store.get(inv.nodes["gpu-1"].address).probed_at > before.probed_at,  # type: ignore[union-attr]
              what="gpu-1's new round in the inventory")
        now = time.time()
        ages = {r.name: now - r.probed_at for r in store.records()}
        fresh, oldest_other = ages["gpu-1"], min(v for k, v in ages.items() if k != "gpu-1")
        assert oldest_other - fresh > 2.0, ages
        m = c.validate(spec_text=NVIDIA_ONLY, timeout=20, max_staleness=(fresh + oldest_other) / 2)
        assert {n.name: n.source for n in m.nodes} == {  # type: ignore[attr-defined]
            name: "INVENTORY" if name == "gpu-1" else "LIVE" for name in HOSTS}
        assert (m.summary.from_inventory, m.summary.live) == (1, 5)  # type: ignore[attr-defined]
        assert {n.name: n.compatible for n in m.nodes} == {n.name: n.compatible for n in a.nodes}


def test_identical_hosts_share_one_stored_feature_set(inv: InvFleet) -> None:
    _, a = _answers(inv.address, NVIDIA_ONLY, live=False)
    fp = {n.name: n.fingerprint for n in a.nodes}  # type: ignore[attr-defined]
    assert fp["gpu-1"] == fp["gpu-2"] and fp["vm-1"] == fp["vm-2"] and fp["gpu-1"] != fp["vm-1"]
    store = inv.agg.store
    assert store is not None
    shared = store.feature_set(fp["gpu-1"])
    assert shared is not None and shared.nodes >= 2
    assert a.summary.distinct_feature_sets == len(set(fp.values()))  # type: ignore[attr-defined]
    assert store.distinct_sets() == len(set(fp.values()))


def test_why_not_counts_are_exact_and_printed_under_the_ranked_table(inv: InvFleet) -> None:
    _, a = _answers(inv.address, GPU_SPEC, live=False)
    gpu, amd = a.summary.why_not  # type: ignore[attr-defined]
    # hand count: 3 h100 copies pass set #1; mi-1 lacks 10de and the nvidia module; vm-1/vm-2 lack both
    assert (gpu.nodes_passed, gpu.nodes_failed) == (3, 3)
    counts = {(e.kind, e.text): e.nodes for e in gpu.exclusions}
    assert counts[("expression", "pci.device vendor In [10de]")] == 3
    assert counts[("expression", "kernel.loadedmodule nvidia Exists")] == 3
    assert counts[("rule", "nvidia")] == 3
    assert (amd.nodes_passed, amd.nodes_failed) == (1, 5)
    assert {(e.kind, e.text): e.nodes for e in amd.exclusions}[("expression", "pci.device vendor In [1002]")] == 5
    why_not, out = fleet_validate_why_not(inv.address, GPU_SPEC, inv.tmp / "gpu.yaml")
    assert why_not[0].startswith("  set #1 gpu: 3 nodes excluded by ")
    assert "pci.device vendor In [10de]" in why_not[0] and "kernel.loadedmodule nvidia Exists" in why_not[0]
    assert why_not[1] == "  set #2 amd: 5 nodes excluded by pci.device vendor In [1002]"
    assert "6 from the inventory" in out


class _Watch:
    """`nodecompat fleet watch -o json` as a subprocess; events read on a thread into a queue."""

    def __init__(self, address: str, spec: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodecompat.clients.cli", "fleet", "watch", "--aggregator", address,
             "--spec", str(spec), "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.q: Queue[dict[str, object]] = Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(json.loads(line))

    def next(self, timeout: float = 30.0) -> dict[str, object]:
        try:
            return self.q.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no event within {timeout}s; stderr: {self.proc.stderr}") from None

    def until(self, node: str, state: str, timeout: float = 30.0) -> tuple[dict[str, object], float]:
        start = time.monotonic()
        while True:
            ev = self.next(timeout)
            if ev.get("node") == node and ev.get("state") == state:
                return ev, time.monotonic() - start

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _refresh(proc: Proc) -> None:
    stub = node_pb2_grpc.NodeServiceStub(grpc.insecure_channel(proc.address))
    stub.GetFeatures(features_pb2.GetFeaturesRequest(refresh=True, prefixes=["kernel.version"]), timeout=30)


def _expect_initial_nvidia_fit(w: _Watch) -> None:
    """WatchFleet's initial fit set for a spec only the three NVIDIA hosts fit, then its `synced` marker."""
    initial = [w.next() for _ in range(len(HOSTS) + 1)]
    states = {e["node"]: e["state"] for e in initial if "node" in e}
    assert states == {"gpu-1": "COMPATIBLE", "gpu-2": "COMPATIBLE", "gpu-3": "COMPATIBLE",
                      "mi-1": "INCOMPATIBLE", "vm-1": "INCOMPATIBLE", "vm-2": "INCOMPATIBLE"}
    assert all(e.get("initial") for e in initial if "node" in e) and "synced" in initial[-1]


def test_drift_a_module_unloaded_and_loaded_again_is_a_transition_with_its_reason(inv: InvFleet) -> None:
    spec = inv.tmp / "nvidia.yaml"
    spec.write_text(NVIDIA_ONLY)
    w = _Watch(inv.address, spec)
    try:
        _expect_initial_nvidia_fit(w)
        unload_module(inv.roots["gpu-3"], "nvidia")
        _refresh(inv.nodes["gpu-3"])
        ev, took = w.until("gpu-3", "INCOMPATIBLE")
        assert not ev["initial"] and any("nvidia" in r for r in ev["reasons"])  # type: ignore[attr-defined]
        print(f"drift: refresh -> WatchFleet INCOMPATIBLE event in {took:.2f}s")
        _, a = _answers(inv.address, NVIDIA_ONLY, live=False)
        assert not a.summary.ranking or "gpu-3" not in [  # type: ignore[attr-defined]
            n.name for n in a.nodes if n.compatible]  # type: ignore[attr-defined]
        load_module(inv.roots["gpu-3"], "nvidia")
        _refresh(inv.nodes["gpu-3"])
        w.until("gpu-3", "COMPATIBLE")
    finally:
        w.stop()


# The NVIDIA driver at 550 or later (gpu.driver major comes from /sys/module/nvidia/version, probes/gpu.py).
DRIVER_550 = """
version: v1alpha1
compatibilities:
- description: driver 550+
  rules:
  - name: driver
    matchFeatures:
    - feature: gpu.driver
      matchExpressions:
        major: {op: Gt, value: ["549"]}
"""


def test_drift_a_driver_version_change_is_a_transition_with_its_reason(inv: InvFleet) -> None:
    version = inv.roots["gpu-1"] / "sys" / "module" / "nvidia" / "version"
    before = version.read_text()
    assert before.startswith("550."), before  # the fixture's driver: 550.54.15
    spec = inv.tmp / "driver550.yaml"
    spec.write_text(DRIVER_550)
    w = _Watch(inv.address, spec)
    try:
        _expect_initial_nvidia_fit(w)
        version.write_text("535.104.05\n")  # a driver downgrade on gpu-1's host copy
        _refresh(inv.nodes["gpu-1"])
        ev, took = w.until("gpu-1", "INCOMPATIBLE")
        assert not ev["initial"], ev
        assert any("gpu.driver" in r and "major" in r and "535" in r for r in ev["reasons"]), ev  # type: ignore[attr-defined]
        print(f"driver drift: refresh -> WatchFleet INCOMPATIBLE event in {took:.2f}s: {ev['reasons']}")
        # the other copies of the same host did not move; the inventory answer agrees
        _, a = _answers(inv.address, DRIVER_550, live=False)
        fits = sorted(n.name for n in a.nodes if n.compatible)
        assert fits == ["gpu-2", "gpu-3"], fits
        fp = {n.name: n.fingerprint for n in a.nodes}  # type: ignore[attr-defined]
        assert fp["gpu-1"] != fp["gpu-2"]  # gpu-1 no longer shares the h100 set
        version.write_text(before)
        _refresh(inv.nodes["gpu-1"])
        ev, _ = w.until("gpu-1", "COMPATIBLE")
        assert not ev["initial"]
    finally:
        version.write_text(before)
        w.stop()




def _whatif(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "what-if", *args],
                          capture_output=True, text=True, timeout=60)


def test_what_if_mixes_snapshots_and_aggregators_each_repeated(inv: InvFleet) -> None:
    gpu = inv.tmp / "mix-gpu.yaml"
    gpu.write_text(GPU_SPEC)
    nv = inv.tmp / "mix-nv.yaml"
    nv.write_text(NVIDIA_ONLY)
    rhel10 = features_snapshot(inv.tmp, "h100-server", "rhel10-h100", strip_nvidia=True)
    h100 = features_snapshot(inv.tmp, "h100-server", "h100")
    # (--features | --aggregator [--selector])... in any order; each --selector belongs to the --aggregator before it
    r = _whatif("--spec", str(gpu), "--spec", str(nv), "--features", str(rhel10),
                "--aggregator", inv.address, "--selector", "host=amd-mi300", "--features", str(h100),
                "--aggregator", inv.address, "--selector", "host=plain-vm", "-o", "json")
    assert r.returncode == 0, r.stderr  # each spec fits somewhere (gpu: mi-1 and h100; nvidia: h100)
    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    assert [(c["node_name"], c["compatible"]) for c in rows[str(gpu)]["cells"]] == [
        ("rhel10-h100", False), ("mi-1", True), ("h100", True), ("vm-1", False), ("vm-2", False)]
    assert rows[str(gpu)]["fits"] == 2 and rows[str(nv)]["fits"] == 1
    nv_cells = {c["node_name"]: c for c in rows[str(nv)]["cells"]}
    assert [n for n, c in nv_cells.items() if c["compatible"]] == ["h100"]
    assert "nvidia" in nv_cells["rhel10-h100"]["reason"] and "nvidia" in nv_cells["mi-1"]["reason"]
    assert {c["status"] for c in rows[str(nv)]["cells"]} == {"OK"}

    # the planned hosts and one fleet group only: the nvidia spec fits nowhere -> 1; the table has every column
    r = _whatif("--spec", str(gpu), "--spec", str(nv), "--aggregator", inv.address, "--selector",
                "host=plain-vm", "--features", str(rhel10))
    assert r.returncode == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IMAGE/SPEC", "vm-1", "vm-2", "rhel10-h100", "FITS"]
    assert lines[2].split()[1:] == ["NO", "NO", "NO", "0/3"]

    # the same node met through two targets is told apart by its aggregator's address
    r = _whatif("--spec", str(nv), "--aggregator", inv.address, "--selector", "host=amd-mi300",
                "--aggregator", inv.address, "--selector", "host=amd-mi300", "-o", "json")
    (row,) = json.loads(r.stdout)["rows"]
    assert [c["node_name"] for c in row["cells"]] == ["mi-1", f"{inv.address}/mi-1"], r.stdout

    # a --selector before any of several --aggregator is ambiguous: an error (2), nothing printed
    r = _whatif("--spec", str(nv), "--selector", "host=plain-vm", "--aggregator", inv.address,
                "--aggregator", inv.address)
    assert r.returncode == 2 and "--selector" in r.stderr and r.stdout == ""
    # with a single --aggregator a --selector anywhere applies to it (as before)
    r = _whatif("--spec", str(nv), "--selector", "host=amd-mi300", "--aggregator", inv.address, "-o", "json")
    assert r.returncode == 1 and [c["node_name"] for c in json.loads(r.stdout)["rows"][0]["cells"]] == ["mi-1"]


def test_killed_daemon_is_unreachable_and_a_stopped_one_stale(inv: InvFleet) -> None:
    spec = inv.tmp / "nvidia2.yaml"
    spec.write_text(NVIDIA_ONLY)
    w = _Watch(inv.address, spec)
    stopped = inv.nodes["gpu-2"]
    try:
        for _ in range(len(HOSTS) + 1):
            w.next()
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        _, took = w.until("gpu-2", "STALE", timeout=STALE_AFTER + 30)
        print(f"SIGSTOP -> STALE in {took:.2f}s (stale_after {STALE_AFTER}s)")
        # ValidateFleet asks a STALE node live, within the call's deadline
        with FleetClient(inv.address) as c:
            a = c.validate(spec_text=NVIDIA_ONLY, timeout=3)
        gpu2 = next(n for n in a.nodes if n.name == "gpu-2")
        assert gpu2.source == "LIVE" and gpu2.status != "OK"  # type: ignore[attr-defined]
        assert a.summary.live == 1 and a.summary.from_inventory == 5  # type: ignore[attr-defined]
        os.kill(stopped.proc.pid, signal.SIGCONT)
        w.until("gpu-2", "COMPATIBLE", timeout=30)
        inv.nodes["vm-2"].kill()
        _, took = w.until("vm-2", "UNREACHABLE", timeout=STALE_AFTER + 30)
        print(f"SIGKILL -> UNREACHABLE in {took:.2f}s")
        with FleetClient(inv.address) as c:
            a = c.validate(spec_text=NVIDIA_ONLY, timeout=5)
        vm2 = next(n for n in a.nodes if n.name == "vm-2")
        assert vm2.source == "LIVE" and vm2.status == "UNAVAILABLE"  # type: ignore[attr-defined]
    finally:
        os.kill(stopped.proc.pid, signal.SIGCONT)
        w.stop()


def test_grpcurl_lists_and_calls_the_new_rpcs(inv: InvFleet) -> None:
    def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30)

    def grpcurl_stream(done: Callable[[str], bool], *args: str) -> str:
        """A streaming call through grpcurl (bounded by its -max-time): its output (stderr after stdout)
        once `done(output)` holds (grpcurl is then stopped: the stream never ends on its own) or grpcurl
        has exited."""
        proc = subprocess.Popen([GRPCURL, "-plaintext", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        out = ""
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # ends when grpcurl exits at -max-time at the latest
                out += line
                if done(out):
                    break
        finally:
            proc.kill()
            proc.wait(30)
        return out

    node = inv.nodes["gpu-1"].address
    listed = grpcurl(node, "list", "nodecompat.v1.NodeService")
    assert "nodecompat.v1.NodeService.WatchFeatures" in listed.stdout, listed.stderr
    listed = grpcurl(inv.address, "list", "nodecompat.v1.FleetService")
    assert {"nodecompat.v1.FleetService.WatchFleet", "nodecompat.v1.FleetService.WhatIf"} <= set(
        listed.stdout.split()), listed.stderr
    # the first message of WatchFeatures: the current features with round id and fingerprint
    got = grpcurl_stream(lambda out: "\n}\n" in out, "-max-time", "3", "-d", '{"heartbeat_seconds": 1}', node,
                         "nodecompat.v1.NodeService/WatchFeatures")
    first = json.loads(got[: got.index("\n}\n") + 2])
    assert set(first) == {"features"}, got[:300]
    change = first["features"]
    assert change.get("nodeName", change.get("node_name")) == "gpu-1", list(change)
    assert change["fingerprint"].startswith("sha256:") and int(change.get("roundId", change.get("round_id"))) >= 1
    got = grpcurl_stream(lambda out: '"synced"' in out and '"COMPATIBLE"' in out, "-max-time", "3", "-d",
                         json.dumps({"spec": NVIDIA_ONLY}), inv.address, "nodecompat.v1.FleetService/WatchFleet")
    assert '"synced"' in got and '"COMPATIBLE"' in got, got[-2000:]
    got = grpcurl("-d", json.dumps({"specs": [{"spec": NVIDIA_ONLY, "name": "nv"}], "selector": {"host": "amd-mi300"}}),
                  inv.address, "nodecompat.v1.FleetService/WhatIf")
    (row,) = json.loads(got.stdout)["rows"]
    assert row["name"] == "nv" and [c.get("nodeName", c.get("node_name")) for c in row["cells"]] == ["mi-1"], got.stdout
    assert inventory_pb2.FleetEvent.State.Name(1) == "COMPATIBLE"


def test_what_if_over_the_fleet_matrix_via_the_aggregator(inv: InvFleet) -> None:
    gpu = inv.tmp / "wi-gpu.yaml"
    gpu.write_text(GPU_SPEC)
    nv = inv.tmp / "wi-nv.yaml"
    nv.write_text(NVIDIA_ONLY)
    r = subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "what-if", "--spec", str(gpu), "--spec", str(nv),
         "--aggregator", inv.address, "--selector", "host=amd-mi300", "-o", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1, r.stderr  # the nvidia-only spec fits no node with host=amd-mi300
    rows = {row["name"]: row for row in json.loads(r.stdout)["rows"]}
    assert [(c["node_name"], c["compatible"]) for c in rows[str(gpu)]["cells"]] == [("mi-1", True)]
    cell = rows[str(nv)]["cells"][0]
    assert (cell["node_name"], cell["compatible"], cell["status"]) == ("mi-1", False, "OK")
    assert "nvidia" in cell["reason"]


def test_hostile_watchers_get_clear_statuses_and_health_keeps_answering(inv: InvFleet) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(inv.address)
    fleet = fleet_pb2_grpc.FleetServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        next(fleet.WatchFleet(inventory_pb2.WatchFleetRequest(spec="compatibilities: 5"), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        next(fleet.WatchFleet(inventory_pb2.WatchFleetRequest(), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image" in (err.value.details() or "")
    # a heartbeat interval out of range is clamped, not refused; NaN means the default
    node = grpc.insecure_channel(inv.nodes["mi-1"].address)
    for asked in (float("nan"), -5.0, 1e9):
        s = node_pb2_grpc.NodeServiceStub(node).WatchFeatures(
            inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=asked), timeout=10)
        assert next(s).WhichOneof("item") == "features"
        s.cancel()
    # many idle watchers on the aggregator: Health still answers at once
    streams = [fleet.WatchFleet(inventory_pb2.WatchFleetRequest(spec=NVIDIA_ONLY), timeout=30) for _ in range(20)]
    for s in streams:
        next(s)
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for s in streams:
        s.cancel()
    channel.close()
    node.close()


def test_a_node_leaving_the_fleet_is_a_left_event_and_leaves_the_inventory(inv: InvFleet) -> None:
    spec = inv.tmp / "nvidia-left.yaml"
    spec.write_text(NVIDIA_ONLY)
    nodes_file = inv.tmp / "nodes.yaml"
    before = nodes_file.read_text()
    w = _Watch(inv.address, spec)
    try:
        for _ in range(len(HOSTS) + 1):
            w.next()
        kept = [e for e in json.loads(before) if e["name"] != "mi-1"]
        nodes_file.write_text(json.dumps(kept))
        ev, _ = w.until("mi-1", "LEFT", timeout=30)
        assert ev["address"] == inv.nodes["mi-1"].address
        assert inv.agg.store is not None
        _wait(lambda: inv.agg.store.get(inv.nodes["mi-1"].address) is None, what="mi-1 out of the store")  # type: ignore[union-attr]
        nodes_file.write_text(before)  # it comes back: a transition to its state
        w.until("mi-1", "INCOMPATIBLE", timeout=30)
    finally:
        nodes_file.write_text(before)
        w.stop()
