"""Issue 12, why-not counts where facts are unknown: real daemons on copies of fixture hosts behind a real
aggregator, each daemon with a third-party probe plugin installed the way plugins are (an entry point in
the `nodecompat.probes` group of a distribution on the daemon's path). The plugin reads the host's
/etc/rack.conf and raises on a malformed one, so on two hosts the probe fails and rack.location is unknown
there. The fleet is hand-counted; the inventory's counts and the live path's counts must both be exact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_cli import fleet_validate_why_not
from support_fleet import Proc, aggregator, start_node
from support_fleet import wait_until as _wait
from support_hosts import copy_fixture

from nodecompat.clients.fleet_client import FleetAnswer, FleetClient
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

PLUGIN = '''
"""A site probe: rack.location from the host's /etc/rack.conf (key=value lines); a malformed file is an error."""
from nodecompat.probes.base import AttributeInfo, FeatureInfo, Probe, ProbeOutput


class RackProbe(Probe):
    name = "rack"
    features = (FeatureInfo("rack.location", frozenset({"attribute"}), nfd=False, source="/etc/rack.conf",
                            attributes=(AttributeInfo("zone", nfd=False), AttributeInfo("row", nfd=False))),)

    def discover(self, host):
        out = ProbeOutput()
        text = host.read_text("/etc/rack.conf")
        if text is None:
            out.notes.append("no /etc/rack.conf")
            return out
        attrs = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "=" not in line:
                raise ValueError(f"/etc/rack.conf line {n}: not key=value: {line!r}")
            k, v = line.split("=", 1)
            attrs[k.strip()] = v.strip()
        out.features.add_attributes("rack.location", attrs)
        return out
'''

# Set #1: rack zone a; set #2: the NVIDIA driver loaded.
SPEC = """
version: v1alpha1
compatibilities:
- description: rack a
  rules:
  - name: rack
    matchFeatures:
    - feature: rack.location
      matchExpressions:
        zone: {op: In, value: ["a"]}
- description: nvidia
  rules:
  - name: driver
    matchFeatures:
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
"""

# name -> (fixture host, /etc/rack.conf or None)
HOSTS = {
    "vm-a": ("plain-vm", "zone=a\nrow=1\n"),
    "vm-b": ("plain-vm", "zone=b\nrow=2\n"),
    "vm-broken": ("plain-vm", "zone=a\nrow 3\n"),  # the probe fails: rack.location unknown
    "gpu-broken": ("h100-server", "zone a\n"),  # the probe fails: rack.location unknown
    "mi-norack": ("amd-mi300", None),  # no file: rack.location absent (known to be absent)
}


def _site(tmp: Path) -> Path:
    """A directory holding the plugin as an installed distribution (module + dist-info entry point)."""
    site = tmp / "site"
    site.mkdir()
    (site / "nodecompat_rack_probe.py").write_text(PLUGIN)
    dist = site / "nodecompat_rack_probe-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nodecompat-rack-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nodecompat.probes]\nrack = nodecompat_rack_probe:RackProbe\n")
    return site


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AggregatorDaemon, dict[str, Proc], Path]]:
    tmp = tmp_path_factory.mktemp("inventory-unknown")
    site = _site(tmp)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    procs: dict[str, Proc] = {}
    try:
        for name, (host, rack) in HOSTS.items():
            root = Path(copy_fixture(host, tmp / name).root)
            if rack is not None:
                (root / "etc").mkdir(exist_ok=True)
                (root / "etc" / "rack.conf").write_text(rack)
            procs[name] = start_node(tmp, name, host, root=root, env=env, wait=False)
        for p in procs.values():
            p.wait_serving()
        nodes_file = tmp / "nodes.json"
        nodes_file.write_text(json.dumps([{"name": n, "address": p.address} for n, p in procs.items()]))
        with aggregator(nodes_file=str(nodes_file), sync=SyncConfig(heartbeat=1.0, reconcile_interval=0.2)) as agg:
            store = agg.store
            assert store is not None
            _wait(lambda: len([r for r in store.records() if r.has_features and r.state == "OK"]) == len(HOSTS),
                  what="every node in the inventory")
            yield agg, procs, tmp
    finally:
        for p in procs.values():
            p.kill()


def _validate(agg: AggregatorDaemon, live: bool) -> FleetAnswer:
    with FleetClient(agg.address) as c:  # type: ignore[attr-defined]
        return c.validate(spec_text=SPEC, live=live, timeout=30)


def test_the_plugin_probe_runs_and_fails_where_the_host_file_is_malformed(fleet) -> None:  # type: ignore[no-untyped-def]
    agg, _, _ = fleet
    store = agg.store
    by_name = {r.name: r for r in store.records()}
    failed = {n for n, r in by_name.items() if store.feature_set(r.fingerprint).probe_failed}
    assert failed == {"vm-broken", "gpu-broken"}
    unknown = store.feature_set(by_name["vm-broken"].fingerprint).unknown
    assert set(unknown) == {"rack.location"} and "probe rack failed" in unknown["rack.location"], unknown
    held = store.feature_set(by_name["vm-a"].fingerprint).features.attributes["rack.location"].elements
    assert held == {"zone": "a", "row": "1"}


@pytest.mark.parametrize("live", [False, True], ids=["inventory", "live"])
def test_probe_failed_and_unknown_counts_are_exact_on_a_hand_counted_fleet(fleet, live: bool) -> None:  # type: ignore[no-untyped-def]
    agg, _, _ = fleet
    a = _validate(agg, live)
    assert {n.source for n in a.nodes} == {"LIVE" if live else "INVENTORY"}  # type: ignore[attr-defined]
    fits = {n.name: n.compatible for n in a.nodes}
    # hand count: set #1 (rack zone a) holds on vm-a only; set #2 (nvidia) on gpu-broken only
    assert fits == {"vm-a": True, "vm-b": False, "vm-broken": False, "gpu-broken": True, "mi-norack": False}
    s = a.summary
    assert s.probe_failed == 2  # vm-broken, gpu-broken
    rack, nvidia = s.why_not
    # set #1 failed on vm-b (zone b), mi-norack (no rack.location) and the two where it is unknown
    assert (rack.nodes_passed, rack.nodes_failed, rack.nodes_unknown) == (1, 4, 2)
    counts = {(e.kind, e.text): e.nodes for e in rack.exclusions}
    assert counts[("expression", "rack.location zone In [a]")] == 4
    assert counts[("rule", "rack")] == 4
    # set #2 failed on every node but gpu-broken; none of them hinged on an unknown fact
    assert (nvidia.nodes_passed, nvidia.nodes_failed, nvidia.nodes_unknown) == (1, 4, 0)
    nv_counts = {(e.kind, e.text): e.nodes for e in nvidia.exclusions}
    assert nv_counts[("expression", "kernel.loadedmodule nvidia Exists")] == 4


def test_the_cli_prints_the_unknown_and_probe_failed_counts(fleet) -> None:  # type: ignore[no-untyped-def]
    agg, _, tmp = fleet
    why_not, _ = fleet_validate_why_not(agg.address, SPEC, tmp / "rack.yaml")
    assert why_not[0].startswith("  set #1 rack a: 4 nodes excluded by rack.location zone In [a]")
    assert why_not[0].endswith("(2 with unknown facts)")
    assert "  2 node(s) with a failed probe (some facts unknown)" in why_not
