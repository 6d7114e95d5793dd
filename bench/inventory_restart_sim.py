"""bench/bench_inventory.py's restart rows (issue 12 point 7, `aggregator --state-file`,
server/inventory/inventory_snapshot.py): an aggregator restarted with the snapshot of N registered nodes.

After bench/inventory_push_sim.py's push rows (their aggregator held N nodes from N simulated daemons and wrote its
snapshot when it stopped), a real `nodecompat aggregator --state-file` process is started on it:
(a) restart with the snapshot: seconds from the exec to all N held, counted by ValidateFleet from the inventory
    (its summary's from_inventory; polled every 0.2 s). Not ListNodes: it health-checks every node of its page
    not heard from for 10 s, which measures dialling the simulator, not holding the nodes;
(b) re-registration of all N at once after that restart (the simulator again, the same lease keys and addresses:
    every call a plain renewal): seconds from the first RegisterNode to the last first one accepted, with the
    aggregator's and the simulator's CPU over it (both on this machine's CPUs: the simulator's own calls, a new
    connection each as LeaseKeeper makes, cost it more than the aggregator), and the fetches the simulator served
    (0: no node was fetched).

And the same for nodes of a nodes file (streamed, kept by WatchFeatures streams: stream_restart_rows), against
bench/inventory_stream_sim.py's simulator: the snapshot of the N nodes bench_inventory.py's resubscribe row held
(collect(): what a `nodecompat aggregator --nodes-file --state-file` writes, with the SERVING contact its streams
note; stream_snapshot) is written, that row's simulator is stopped (its 10,000 streams would keep its descriptors
past their limit) and a fresh one serves the same nodes at the same loopback addresses on its own port (the
snapshot's addresses say that port); a `nodecompat aggregator --nodes-file --state-file` process is started:
(c) exec to all N held (ValidateFleet from the inventory, as (a));
(d) exec to all N resubscribed: every stream open and its first message handled. The simulator answers each
    known_fingerprint with its features omitted, as an unchanged daemon does, a probe round later (round 2, 1 s
    after its start: the node's as_of moves when the aggregator handles it); the clock stops when ValidateFleet
    gives every node a later as_of than the snapshot's (polled every 0.2 s once the simulator has sent all N, so
    the polls do not load the aggregator while it resubscribes). Aggregator CPU from its exec (imports, the
    snapshot's load and the resubscribe) and the simulator's over the same time, per node.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server.inventory.fleet_nodes import FleetNode
    from nodecompat.v1 import snapshot_pb2

ROOT = Path(__file__).resolve().parent.parent
SIM = Path(__file__).resolve().parent / "inventory_push_sim.py"
SPEC = """
version: v1alpha1
compatibilities:
- rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions: {major: {op: Gt, value: ["5"]}}
"""


def _held(address: str) -> int:
    """Nodes ValidateFleet answers from the inventory (0 while the aggregator does not answer)."""
    from nodecompat.clients.fleet_client import FleetCallError, FleetClient

    try:
        with FleetClient(address) as c:
            return c.validate(spec_text=SPEC, timeout=30).summary.from_inventory
    except FleetCallError:
        return 0


def _wait_held(address: str, n: int, t0: float, agg: subprocess.Popen) -> tuple[int, float]:  # type: ignore[type-arg]
    """Polls _held every 0.2 s until n nodes are held, 120 s from t0 passed or the aggregator exited:
    (nodes held, seconds since t0)."""
    held = 0
    while held < n and time.perf_counter() - t0 < 120 and agg.poll() is None:
        held = _held(address)
        if held < n:
            time.sleep(0.2)
    return held, time.perf_counter() - t0


def restart_rows(n: int, k: int, lease_ttl: float, state: Path, ports: str, seed: str,
                 row: Callable[[str, float, str, float], None], process_cpu: Callable[[str], float],
                 limit_s: float) -> None:
    """Print rows (a) and (b) (module doc) for the snapshot at `state` of n nodes in k profiles; `ports`: the
    first simulator's fetch ports (comma-joined), `seed`: its lease keys' seed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    size = state.stat().st_size
    t0 = time.perf_counter()
    agg = subprocess.Popen([sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen", address,
                            "--state-file", str(state), "--lease-ttl", str(lease_ttl), "--max-registrations", str(n),
                            "--allow-unauthenticated-registration", "--log-level", "WARNING"], cwd=ROOT)
    sim = None
    try:
        held, took = _wait_held(address, n, t0, agg)
        if held >= n:
            row(f"aggregator restart with a snapshot of {n} registered nodes ({size:,} bytes): exec to all held "
                "(ValidateFleet from the inventory)", took, "s", limit_s)
        else:
            print(f"ROW aggregator restart with a snapshot of {n} registered nodes | NOT complete: {held}/{n} held "
                  f"after {took:.0f} s | issue 12 limit {limit_s:g} s | ratio n/a | target <= 1 | NOT MET")
            return
        tmp = state.parent
        ready = tmp / "ready-restart"
        cpu0 = process_cpu(str(agg.pid))
        sim = subprocess.Popen([sys.executable, str(SIM), "--simulate", str(ready), address, str(n), str(k),
                                str(lease_ttl)], env={**os.environ, "PYTHONPATH": str(ROOT / "bench"),
                                                      "BENCH_LEASE_SEED": seed, "BENCH_PORTS": ports},
                               stderr=subprocess.DEVNULL)
        while not (ready.exists() and ready.read_text()):
            assert sim.poll() is None, "the simulator ended"
            time.sleep(0.02)
        sim0 = process_cpu(str(sim.pid))
        done = Path(str(ready) + ".done")
        end = time.monotonic() + 120
        while not (done.exists() and done.read_text()) and time.monotonic() < end:
            time.sleep(0.05)
        cpu1, sim1 = process_cpu(str(agg.pid)), process_cpu(str(sim.pid))
        if not (done.exists() and done.read_text()):
            print(f"ROW re-registration of {n} nodes at once after a restart with the snapshot | NOT complete in "
                  f"120 s | issue 12 limit {limit_s:g} s | ratio n/a | target <= 1 | NOT MET")
            return
        seconds, fetched = done.read_text().split()
        still = _held(address)
        row(f"full re-registration after an aggregator restart with the snapshot ({n} registered nodes, all "
            f"re-registering at once: renewals; {fetched} fetched, {still} held after)", float(seconds), "s", limit_s)
        print(f"  (aggregator CPU {cpu1 - cpu0:.2f} s = {(cpu1 - cpu0) / n * 1e3:.2f} ms a node; simulator CPU "
              f"{sim1 - sim0:.2f} s on the same {os.cpu_count()} CPUs: the wall time is bounded by both together; "
              f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait()
        agg.terminate()
        agg.wait()


def _fresh(address: str, after_ns: int) -> int:
    """Nodes ValidateFleet answers from the inventory with an as_of later than `after_ns` (epoch ns)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from nodecompat.clients.fleet_client import FleetCallError, FleetClient

    try:
        with FleetClient(address) as c:
            got = c.validate(spec_text=SPEC, timeout=60).nodes
    except FleetCallError:
        return 0
    seen: dict[str, bool] = {}
    for v in got:
        if v.as_of not in seen:
            ts = Timestamp()
            ts.FromJsonString(v.as_of)
            seen[v.as_of] = ts.ToNanoseconds() > after_ns
    return sum(1 for v in got if v.source == "INVENTORY" and seen[v.as_of])


def stream_snapshot(members: list[FleetNode], store: FeatureStore, tmp: Path) -> snapshot_pb2.InventorySnapshot:
    """The snapshot an aggregator with `members` as its nodes file (written in tmp) writes once `store` holds them
    (collect(), with the SERVING contact and reported name its streams note at each first message)."""
    from nodecompat.server.inventory.fleet_nodes import NodeInventory
    from nodecompat.server.inventory.inventory_snapshot import collect

    path = tmp / "nodes-before.json"
    path.write_text(json.dumps([{"name": m.name, "address": m.address, "labels": m.labels} for m in members]))
    inventory = NodeInventory(nodes_file=path)
    inventory.load()
    inventory.record_contacts([(r.key, "SERVING", r.name) for r in store.records()])
    return collect(inventory, store)


def stream_restart_rows(n: int, k: int, snap: snapshot_pb2.InventorySnapshot, old_port: int, tmp: Path,
                        node_address: Callable[[int, int], str], row: Callable[[str, float, str, float], None],
                        process_cpu: Callable[[str], float], limit_s: float, transport: str = "grpc") -> None:
    """Print rows (c) and (d) (module doc) for n nodes in k profiles whose snapshot `snap` was taken of simulated
    nodes on port `old_port` (that simulator stopped: a simulator of its own serves these rows, its nodes at the
    same loopback addresses on its port); tmp: a directory for the nodes file, the snapshot and the simulator's
    files; transport: the aggregator's --watch-transport."""
    port_file, sent = tmp / "port-restart", tmp / "sent"
    sim = subprocess.Popen([sys.executable, str(Path(__file__).parent / "bench_inventory.py"), "--serve-simulator",
                            str(port_file), "--profiles", str(k)],
                           env={**os.environ, "BENCH_SIM_NODES": str(n), "BENCH_SIM_SENT": str(sent)})
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert sim.poll() is None, "the simulator ended"
            time.sleep(0.05)
        port = int(port_file.read_text())
        _restart(n, k, snap, old_port, port, sim.pid, sent, tmp, node_address, row, process_cpu, limit_s, transport)
    finally:
        sim.terminate()
        sim.wait()


def _restart(n: int, k: int, snap: snapshot_pb2.InventorySnapshot, old_port: int, sim_port: int, sim_pid: int,
             sent: Path, tmp: Path, node_address: Callable[[int, int], str],
             row: Callable[[str, float, str, float], None], process_cpu: Callable[[str], float],
             limit_s: float, transport: str) -> None:
    from nodecompat.server.inventory.inventory_snapshot import write_atomic

    nodes_file, state = tmp / "nodes.json", tmp / "streams.state"
    nodes_file.write_text(json.dumps([{"name": f"sim-{i:05d}", "address": node_address(i, sim_port),
                                       "labels": {"profile": str(i % k)}} for i in range(n)]))
    for entry in snap.nodes:  # the same nodes, served on this simulator's port
        entry.address = entry.address.removesuffix(f":{old_port}") + f":{sim_port}"
    write_atomic(state, snap.SerializeToString())
    after_ns = max(e.probed_at.ToNanoseconds() for e in snap.nodes) + 500_000_000
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    size = state.stat().st_size
    sim0 = process_cpu(str(sim_pid))
    t0 = time.perf_counter()
    agg = subprocess.Popen([sys.executable, "-m", "nodecompat.clients.cli", "aggregator", "--listen", address,
                            "--nodes-file", str(nodes_file), "--state-file", str(state), "--heartbeat", "10",
                            "--watch-transport", transport, "--log-level", "WARNING"], cwd=ROOT)
    try:
        held, took = _wait_held(address, n, t0, agg)
        cpu_held = process_cpu(str(agg.pid))
        if held < n:
            print(f"ROW aggregator restart with a snapshot of {n} streamed nodes | NOT complete: {held}/{n} held after "
                  f"{took:.0f} s | issue 12 limit {limit_s:g} s | ratio n/a | target <= 1 | NOT MET")
            return
        row(f"aggregator restart ({transport}) with a snapshot of {n} streamed nodes ({size:,} bytes): exec to all "
            "held (ValidateFleet from the inventory)", took, "s", limit_s)
        print(f"  (aggregator CPU from its exec {cpu_held:.2f} s = {cpu_held / n * 1e3:.2f} ms a node)")
        fresh = 0
        while time.perf_counter() - t0 < 120 and agg.poll() is None:
            if sent.exists() and sent.read_text():
                fresh = _fresh(address, after_ns)
                if fresh >= n:
                    break
            time.sleep(0.2)
        took = time.perf_counter() - t0
        cpu, sim_cpu = process_cpu(str(agg.pid)), process_cpu(str(sim_pid)) - sim0
        if fresh < n:
            print(f"ROW aggregator restart with a snapshot of {n} streamed nodes: all resubscribed | NOT complete: "
                  f"{fresh}/{n} after {took:.0f} s | issue 12 limit {limit_s:g} s | ratio n/a | target <= 1 | NOT MET")
            return
        row(f"aggregator restart ({transport}) with a snapshot of {n} streamed nodes: exec to all resubscribed "
            "(every stream open, its first message handled: features omitted)", took, "s", limit_s)
        print(f"  (aggregator CPU from its exec {cpu:.2f} s = {cpu / n * 1e3:.2f} ms a node; simulator CPU "
              f"{sim_cpu:.2f} s = {sim_cpu / n * 1e3:.2f} ms a node, on the same {os.cpu_count()} CPUs; loadavg "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    finally:
        agg.terminate()
        agg.wait()
