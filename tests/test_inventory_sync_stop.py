"""InventorySync.stop() (server/inventory/inventory_sync.py): when it returns, no stream's TCP connection is open.

Each subscription's task, cancelled by stop(), closed its channel, but the task kept its CancelledError, whose
traceback held the frames it went through with the grpc.aio call among their locals; the call holds gRPC core's
channel and so its connection. The tasks stayed referenced after stop(), so every connection stayed ESTABLISHED
(measured: 500 of 500 streams, 7.5 s after stop() returned; 100 of 100 here, 5 s after). A real InventorySync
subscribed to STREAMS simulated daemons (bench/bench_inventory.py's WatchFeatures simulator, each node its own
loopback address, hence its own connection); the aggregator side's connections are counted from this process's
sockets (/proc/self/fd and /proc/self/net/tcp{,6}); both stream transports (SyncConfig.watch_transport)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support_etcd import wait_for

from nodecompat.fleet.store import FeatureStore
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import InventorySync, SyncConfig

STREAMS = 100
ESTABLISHED = "01"  # the kernel's TCP state code in /proc/net/tcp (include/net/tcp_states.h TCP_ESTABLISHED)


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections of this process whose remote port is `port`."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor among them)
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:["):-1])
    n = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()  # sl local_address rem_address st ... inode
            if f[3] == ESTABLISHED and int(f[2].rsplit(":", 1)[1], 16) == port and f[9] in mine:
                n += 1
    return n


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_no_stream_connection_is_open_once_stop_returns(tmp_path: Path, transport: str) -> None:
    port_file = tmp_path / "sim-port"
    bench = Path(__file__).resolve().parent.parent / "bench" / "bench_inventory.py"
    sim = subprocess.Popen([sys.executable, str(bench), "--serve-simulator", str(port_file), "--profiles", "3"],
                           env={**os.environ, "BENCH_SIM_NODES": str(STREAMS)})
    sync = None
    try:
        wait_for("the simulator's port", lambda: port_file.exists() and bool(port_file.read_text()), 60)
        port = int(port_file.read_text())
        members = [FleetNode(f"sim-{i:05d}", f"127.1.0.{1 + i}:{port}", {}, "file")  # bench_inventory.node_address
                   for i in range(STREAMS)]
        store = FeatureStore()
        sync = InventorySync(lambda: members, store,
                             config=SyncConfig(heartbeat=1.0, reconcile_interval=0.2, watch_transport=transport))
        sync.start()
        wait_for("every node held", lambda: sum(r.has_features for r in store.records()) == STREAMS, 60)
        assert established_to(port) >= STREAMS  # one connection a node (the count sees them)
        sync.stop()
        sync = None
        open_after = established_to(port)
        assert open_after == 0, f"{open_after} of {STREAMS} stream connections still open after stop() returned"
    finally:
        if sync is not None:
            sync.stop()
        sim.terminate()
        sim.wait()
