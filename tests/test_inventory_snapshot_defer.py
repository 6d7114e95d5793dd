"""The state file's periodic write waits while the inventory's streams are being opened (issue 12, full resubscribe
after a restart: server/inventory/inventory_snapshot.py SnapshotWriter `busy`, InventorySync.resubscribing).

A write of 10,000 nodes costs the aggregator ~0.3-0.45 s of CPU holding the GIL, and one came every 5 s while an
aggregator restarted with --state-file reopened its 10,000 streams (each first message moves a node's probe time,
so the store changed at every interval). A real aggregator whose every connecting slot is held by nodes that accept
TCP and never answer (a wave of streams being opened) writes nothing while they are; a write waits at most
`max_defer`, and once the slots are free the writes come again.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import grpc
from support_fleet import aggregator, wait_until

from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc


def test_no_periodic_write_while_every_connecting_slot_is_held(tmp_path: Path) -> None:
    silent = [socket.create_server(("127.0.0.1", 0), backlog=16) for _ in range(2)]  # accept TCP, never answer
    try:
        nodes = tmp_path / "nodes.json"
        nodes.write_text(json.dumps([{"name": f"silent-{i}", "address": f"127.0.0.1:{s.getsockname()[1]}"}
                                     for i, s in enumerate(silent)]))
        state = tmp_path / "state"
        with aggregator(nodes_file=str(nodes), state_file=str(state), state_interval=0.05, check_new_nodes=False,
                        registration=RegistrationPolicy(allow_unauthenticated=True),
                        sync=SyncConfig(max_connecting=2, connect_slot_seconds=120)) as agg:
            writer, sync = agg.state, agg.sync
            assert writer is not None and sync is not None
            wait_until(sync.resubscribing, 30, "both connecting slots held by the silent nodes")
            with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
                fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(fleet_pb2.RegisterNodeRequest(
                    name="registered", address="127.0.5.1:7000", ttl_seconds=60), timeout=10)
            time.sleep(1.0)  # 20 intervals with a change to write
            assert sync.resubscribing() and writer.writes == 0 and not state.exists()
            writer.max_defer = 0.3  # a write waits at most this long, busy or not
            wait_until(lambda: writer.writes >= 1, 30, "a write after max_defer")
            assert sync.resubscribing() and state.exists()
            writer.max_defer = 3600.0
            for s in silent:  # the streams fail (connection closed, then refused): the slots are free again
                s.close()
            wait_until(lambda: not sync.resubscribing(), 60, "the connecting slots released")
            before = writer.writes
            with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
                fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(fleet_pb2.RegisterNodeRequest(
                    name="second", address="127.0.5.2:7000", ttl_seconds=60), timeout=10)
            wait_until(lambda: writer.writes > before, 30, "the periodic write once nothing is being opened")
    finally:
        for s in silent:
            s.close()
