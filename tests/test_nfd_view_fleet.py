"""The fleet's reasons tell a name no probe provides, and an addition hidden in NFD mode, from what a
node lacks (issue 9 item 5), through a real aggregator and real node daemons on fixture hosts."""

from __future__ import annotations

from pathlib import Path

from support_fleet import aggregator, start_node, write_nodes_file

from nodecompat.clients.fleet_client import FleetClient

TYPO = """\
version: v1alpha1
compatibilities:
- description: typo
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.versoin
      matchExpressions:
        major: {op: Ge, value: ['5']}
  - name: gpu
    matchFeatures:
    - feature: gpu.driver
      matchExpressions:
        name: {op: In, value: [nvidia]}
"""

NUMA = """\
version: v1alpha1
compatibilities:
- description: NUMA-placed PCI devices
  rules:
  - name: numa
    matchFeatures:
    - feature: pci.device
      matchName: {op: In, value: [numa_node]}
"""


def test_fleet_reasons_say_not_provided_hidden_and_absent(tmp_path: Path) -> None:
    vm = start_node(tmp_path, "vm", "plain-vm")
    try:
        nodes = write_nodes_file(tmp_path / "nodes.json", [vm])
        with aggregator(nodes_file=str(nodes)) as agg, FleetClient(agg.address) as client:
            typo = client.validate(spec_text=TYPO, timeout=30)
            numa_default = client.validate(spec_text=NUMA, timeout=30)
            numa_nfd = client.validate(spec_text=NUMA, timeout=30, nfd_compat=True)
    finally:
        vm.terminate()
    [node] = typo.nodes
    assert node.status == "OK" and not node.compatible
    assert any("no probe provides `kernel.versoin` — did you mean `kernel.version`?" in r for r in node.reasons)
    # gpu.driver is provided (by the gpu probe); this VM has no GPU: that is "this node lacks it"
    assert any("feature gpu.driver not present on this node" in r for r in node.reasons), node.reasons
    assert numa_default.nodes[0].compatible and numa_default.nodes[0].reasons == []
    [node] = numa_nfd.nodes
    assert not node.compatible
    assert any("`numa_node` of `pci.device` is a nodecompat addition NFD does not publish" in r for r in node.reasons)
