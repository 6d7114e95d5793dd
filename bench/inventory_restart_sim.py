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
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
        held = 0
        while held < n and time.perf_counter() - t0 < 120 and agg.poll() is None:
            held = _held(address)
            if held < n:
                time.sleep(0.2)
        took = time.perf_counter() - t0
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
