"""Review finding: grouped ValidateFleet answers from the inventory (server/inventory/inventory_answers._grouped)
were cut at GROUPED_BYTES counting only the nodes' own fields, not the shared results the message carries. A spec that
reads a node's identity (system.name nodename) has one result per node, so one message grew with the fleet:
3,000 incompatible nodes made one 3.7 MB message, ~15,000 pass FleetClient's 16 MiB receive limit (and
grpcurl's 4 MiB default far sooner). A real FeatureStore, a real parsed spec, the real plan()."""

from __future__ import annotations

import time

from nodecompat.engine.spec import parse_spec
from nodecompat.features import Features
from nodecompat.fleet.store import FeatureStore
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_answers import GROUPED_BYTES, expand_groups, plan

NODES = 3000
VALUES = ", ".join(f'"no-such-node-name-{i:04d}"' for i in range(60))
PINNED = f"""
version: v1alpha1
compatibilities:
- rules:
  - name: pinned
    matchFeatures:
    - feature: system.name
      matchExpressions:
        nodename: {{op: In, value: [{VALUES}]}}
"""


def test_grouped_messages_stay_near_the_bound_when_every_node_has_its_own_result() -> None:
    store = FeatureStore()
    nodes = []
    for i in range(NODES):
        address = f"10.0.{i // 250}.{i % 250}:1"
        features = Features.from_nfd({"attributes": {"system.name": {"elements": {"nodename": f"n{i}"}}}})
        store.put(address, f"n{i}", features, None, time.time(), 1)
        nodes.append(FleetNode(f"n{i}", address))
    p = plan(store, nodes, parse_spec(PINNED), "pinned", [], 0.0, grouped=True)
    assert p.answered == NODES and p.compatible == 0
    sizes = [m.ByteSize() for m in p.batches]
    assert max(sizes) <= GROUPED_BYTES + (64 << 10), sizes  # one node's result and fields past the bound at most
    expanded = [r for m in p.batches for r in expand_groups(m.groups)]
    assert sorted(r.node_name for r in expanded) == sorted(f"n{i}" for i in range(NODES))
    assert all(r.reasons and not r.compatible for r in expanded)
