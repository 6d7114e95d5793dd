"""A plugin's volatile declarations (probes/base.py AttributeInfo volatile) are not honoured: only the built-in
probes' are (nodecompat/fleet/volatile.py module doc). A plugin installed on a node is usually not installed on
the aggregator: had the node left its volatile element out of the profile, the aggregator, which does not know
the element is volatile, answered a spec reading it from a stored set lacking it (INVENTORY, wrong). A real
`nodecompat serve` with a plugin (installed distribution on PYTHONPATH) behind a real in-process aggregator
without it; NFD has no such plugins (a nodecompat addition)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support_daemon import make_plugin
from support_fleet import aggregator, start_node
from support_fleet import wait_until as _wait
from support_hosts import copy_fixture

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server.inventory.inventory_sync import SyncConfig

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

PLUGIN = '''
"""A site probe publishing a usage value it declares volatile."""
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput


class QueueProbe(Probe):
    name = "queue"
    features = (FeatureInfo("site.queue", frozenset({"attribute"}), nfd=False, source="/etc/queue",
                            attributes=(AttributeInfo("slots", nfd=False),
                                        AttributeInfo("used", nfd=False, volatile=True))),)

    def discover(self, host):
        out = ProbeOutput()
        out.features.add_attributes("site.queue", {"slots": "8", "used": "3"})
        return out
'''

SPEC = """version: v1alpha1
compatibilities:
- rules:
  - name: r
    matchFeatures:
    - feature: site.queue
      matchExpressions:
        used: {op: Lt, value: ["5"]}
"""


def test_a_plugins_volatile_element_is_kept_and_answered_right(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "nodecompat_queue_probe", PLUGIN, {"queue": "nodecompat_queue_probe:QueueProbe"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    root = Path(copy_fixture("plain-vm", tmp_path / "n").root)
    node = start_node(tmp_path, "vm-q", "plain-vm", root=root, env=env)
    try:
        nodes_file = tmp_path / "nodes.json"
        nodes_file.write_text(json.dumps([{"name": "vm-q", "address": node.address}]))
        with aggregator(nodes_file=str(nodes_file), sync=SyncConfig(heartbeat=1.0, reconcile_interval=0.2)) as agg:
            store = agg.store
            assert store is not None
            _wait(lambda: any(r.has_features and r.state == "OK" for r in store.records()), 30, "the node held")
            with FleetClient(agg.address) as c:  # type: ignore[attr-defined]
                inv = c.validate(spec_text=SPEC, timeout=20)
                live = c.validate(spec_text=SPEC, timeout=20, live=True)
        assert [(n.source, n.compatible) for n in live.nodes] == [("LIVE", True)]  # type: ignore[attr-defined]
        assert [(n.source, n.compatible) for n in inv.nodes] == [("INVENTORY", True)]  # type: ignore[attr-defined]
    finally:
        node.kill()
