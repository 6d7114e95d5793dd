"""Issue 10 item 2: the aggregator says UNKNOWN until it has checked a node, checks a node as soon as it
appears, and does not keep reporting a node down for 10 s after it came up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from support_daemon import free_port
from support_fleet import aggregator, start_node, write_nodes_file

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.inventory.first_check import FirstHealthChecks
from nodecompat.server.inventory.fleet_nodes import NodeInventory

CLI = [sys.executable, "-m", "nodecompat.clients.cli"]


def test_unchecked_nodes_are_unknown_and_checked_once(tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.json"
    nodes.write_text('[{"name": "a", "address": "127.0.0.1:1"}, {"name": "b", "address": "127.0.0.1:2"}]')
    inv = NodeInventory(nodes_file=nodes)
    inv.load()
    assert [v.health for v in inv.views()] == ["UNKNOWN", "UNKNOWN"]
    checked: list[list[str]] = []

    def check(addresses: list[str], timeout: float) -> None:
        checked.append(addresses)
        for a in addresses:
            inv.record_contact(a, "SERVING" if a.endswith(":1") else "UNAVAILABLE")

    first = FirstHealthChecks(inv, check, batch=1)
    assert first.run_once() == 1 and first.run_once() == 1 and first.run_once() == 0
    assert checked == [["127.0.0.1:1"], ["127.0.0.1:2"]]
    assert [v.health for v in inv.views()] == ["SERVING", "UNAVAILABLE"]


def test_a_new_node_is_checked_at_once_and_a_down_node_rechecked(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    path = write_nodes_file(tmp_path / "nodes.json", [])
    with aggregator(nodes_file=str(path)) as agg, FleetClient(agg.address) as client:
        path.write_text(f'[{{"name": "late", "address": "{address}", "labels": {{"site": "lab"}}}}]')
        # No ListNodes call: the aggregator's own first check records the (down) node's health.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and [v.health for v in agg.inventory.views()] in ([], ["UNKNOWN"]):
            time.sleep(0.05)
        assert agg.inventory.views()[0].health == "UNAVAILABLE"
        node = start_node(tmp_path, "late", "plain-vm", listen=address)
        try:
            # Once the daemon serves, ListNodes looks again instead of repeating UNAVAILABLE for 10 s.
            r = subprocess.run([*CLI, "fleet", "nodes", "--aggregator", agg.address, "--wait", "30"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert "SERVING" in r.stdout.splitlines()[1]
            assert [n.health for n in client.list_nodes()] == ["SERVING"]
            none = subprocess.run([*CLI, "fleet", "nodes", "--aggregator", agg.address, "--selector", "site=x"],
                                  capture_output=True, text=True, timeout=60)
            assert none.returncode == 0 and none.stdout == ""
            assert none.stderr == ("nodecompat fleet: no node matches --selector site=x (1 node(s) in the fleet; "
                                   "labels in the fleet: site=lab; a selector matches nodes having every K=V given)\n")
        finally:
            node.terminate()
