"""Issue 12 core: fingerprints, the inventory store (one stored set per distinct feature set, one
evaluation per set), why-not counts on hand-counted fleets, what-if over snapshots (the real CLI)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from support_cli import features_snapshot
from support_fleetmem import GPU_SPEC, NVIDIA_ONLY, fixture_round

from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import parse_spec
from nodecompat.features import Features
from nodecompat.fleet import whynot
from nodecompat.fleet.fingerprint import fingerprint, split_identity, with_identity
from nodecompat.fleet.reasons import failure_reasons
from nodecompat.fleet.store import FeatureStore, StoreFull, spec_key


def _renamed(features: Features, nodename: str) -> Features:
    f = copy.deepcopy(features)
    f.add_attributes("system.name", {"nodename": nodename})
    return f


def _without_nvidia(features: Features) -> Features:
    f = copy.deepcopy(features)
    f.flags["kernel.loadedmodule"].elements.discard("nvidia")
    return f


def test_fingerprint_is_canonical_and_ignores_identity() -> None:
    h100 = fixture_round("h100-server").features
    a, b = _renamed(h100, "n1"), _renamed(h100, "n2")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a).startswith("sha256:") and len(fingerprint(a)) == 7 + 64
    # flag order and dict insertion order do not matter; a changed fact does
    shuffled = Features()
    for n in reversed(list(a.attributes)):
        shuffled.add_attributes(n, dict(reversed(list(a.attributes[n].elements.items()))))
    shuffled.flags = {n: a.flags[n] for n in reversed(list(a.flags))}
    shuffled.instances = a.instances
    assert fingerprint(shuffled) == fingerprint(a)
    assert fingerprint(_without_nvidia(a)) != fingerprint(a)
    assert fingerprint(a, {"pci.device": "probe pci failed: x"}) != fingerprint(a)
    shared, ident = split_identity(a)
    assert ident == (("system.name", "nodename", "n1"),)
    sysname = shared.attributes.get("system.name")
    assert sysname is None or "nodename" not in sysname.elements
    assert a.attributes["system.name"].elements["nodename"] == "n1"  # the caller's features are untouched
    assert with_identity(shared, ident).attributes["system.name"].elements["nodename"] == "n1"


def _fleet() -> FeatureStore:
    """2 h100, 1 h100 with nvidia unloaded, 3 amd, 4 plain (one with pci unknown): 10 nodes, 5 sets."""
    store = FeatureStore()
    h100 = fixture_round("h100-server").features
    amd = fixture_round("amd-mi300").features
    plain = fixture_round("plain-vm").features
    nodes = [("h1", h100, {}), ("h2", h100, {}), ("h3", _without_nvidia(h100), {})]
    nodes += [(f"a{i}", amd, {}) for i in range(3)]
    nodes += [(f"p{i}", plain, {}) for i in range(3)]
    nodes += [("p3", plain, {"pci.device": "probe pci failed: EIO"})]
    for i, (name, feats, unknown) in enumerate(nodes):
        store.put(f"127.0.0.1:{1000 + i}", name, _renamed(feats, name), unknown, probed_at=1.0, round_id=1)
    return store


def test_store_keeps_each_distinct_set_once_and_evaluates_once_per_set() -> None:
    store = _fleet()
    assert len(store.records()) == 10
    assert store.distinct_sets() == 5
    spec = parse_spec(GPU_SPEC)
    key = spec_key(GPU_SPEC, False)
    verdicts = store.evaluate(spec, key, store.records())
    assert store.stats.evaluations == 5
    assert len(verdicts) == 10
    # identical to evaluating each node's own full features
    for rec in store.records():
        feats, unknown = store.node_features(rec)  # type: ignore[misc]
        direct = evaluate(spec, feats, unknown=unknown)
        assert verdicts[rec.key].compatible == direct.compatible
        assert failure_reasons(verdicts[rec.key]) == failure_reasons(direct)
    assert sorted(r.name for r in store.records() if verdicts[r.key].compatible) == [
        "a0", "a1", "a2", "h1", "h2"]
    store.evaluate(spec, key, store.records())
    assert store.stats.evaluations == 5  # cached per set
    # a node leaving releases its set when it was the last holder
    store.remove("127.0.0.1:1002")
    assert store.distinct_sets() == 4


def test_identity_reading_spec_is_evaluated_per_node() -> None:
    store = _fleet()
    text = """
version: v1alpha1
compatibilities:
- rules:
  - name: the one
    matchFeatures:
    - feature: system.name
      matchExpressions:
        nodename: {op: In, value: ["a1"]}
"""
    verdicts = store.evaluate(parse_spec(text), spec_key(text, False), store.records())
    assert [r.name for r in store.records() if verdicts[r.key].compatible] == ["a1"]


def test_why_not_counts_are_exact_on_a_hand_counted_fleet() -> None:
    store = _fleet()
    spec = parse_spec(GPU_SPEC)
    verdicts = store.evaluate(spec, spec_key(GPU_SPEC, False), store.records())
    # weighted by distinct set == counted node by node
    groups: dict[str, tuple[object, int]] = {}
    for rec in store.records():
        v, n = groups.get(rec.fingerprint, (verdicts[rec.key], 0))
        groups[rec.fingerprint] = (v, n + 1)
    counted = whynot.count(groups.values())
    assert counted == whynot.count((verdicts[r.key], 1) for r in store.records())
    gpu, amd = counted
    # hand count: vendor 10de missing on 3 amd + 4 plain (p3's pci is unknown: still excluded) = 7;
    # nvidia module missing on h3 + 3 amd + 4 plain (no kernel.loadedmodule at all) = 8
    assert (gpu.nodes_passed, gpu.nodes_failed, gpu.nodes_unknown) == (2, 8, 1)
    by_text = {(e.kind, e.text): e.nodes for e in gpu.exclusions}
    assert by_text[("expression", "pci.device vendor In [10de]")] == 7
    assert by_text[("expression", "kernel.loadedmodule nvidia Exists")] == 8
    assert by_text[("rule", "nvidia")] == 8
    assert gpu.exclusions[0].nodes == 8
    assert (amd.nodes_passed, amd.nodes_failed) == (3, 7)
    assert {(e.kind, e.text): e.nodes for e in amd.exclusions}[("expression", "pci.device vendor In [1002]")] == 7
    lines = whynot.summary_lines(counted)
    assert lines[0].startswith("set #1 gpu: 8 nodes excluded by kernel.loadedmodule nvidia Exists; 7 by pci.device")
    assert lines[0].endswith("(1 with unknown facts)")


def test_store_refuses_sets_past_its_byte_budget() -> None:
    store = FeatureStore(max_set_bytes=10_000)
    h100 = fixture_round("h100-server").features
    store.put("a:1", "a", h100, {}, 1.0, 1)
    store.put("b:1", "b", h100, {}, 1.0, 1)  # shared: no new bytes
    try:
        store.put("c:1", "c", fixture_round("amd-mi300").features, {}, 1.0, 1)
    except StoreFull as exc:
        assert "answered live" in str(exc)
    else:
        raise AssertionError("the second distinct set should not fit in 10,000 bytes")
    assert store.distinct_sets() == 1




def _whatif(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodecompat.clients.cli", "what-if", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_what_if_over_snapshots_matrix_json_and_exit_codes(tmp_path: Path) -> None:
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(GPU_SPEC)
    nv = tmp_path / "nvidia.yaml"
    nv.write_text(NVIDIA_ONLY)
    h100 = features_snapshot(tmp_path, "h100-server", "h100")
    rhel10 = features_snapshot(tmp_path, "h100-server", "rhel10-h100", strip_nvidia=True)
    amd = features_snapshot(tmp_path, "amd-mi300", "mi300")

    # every image fits somewhere -> 0; the table names the first reason where it does not
    r = _whatif("--spec", str(gpu), "--spec", str(nv), "--features", str(h100), "--features", str(rhel10),
                "--features", str(amd))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IMAGE/SPEC", "h100", "rhel10-h100", "mi300", "FITS"]
    assert lines[1].split()[1:] == ["OK", "NO", "OK", "2/3"]
    assert lines[2].split()[1:] == ["OK", "NO", "NO", "1/3"]
    assert any("nvidia.yaml on rhel10-h100:" in line and "nvidia" in line for line in lines)

    # the planned hosts only: the nvidia spec fits nowhere -> 1, JSON matrix with reasons
    r = _whatif("--spec", str(gpu), "--spec", str(nv), "--features", str(rhel10), "-o", "json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["all_fit"] is False
    rows = {row["name"]: row for row in doc["rows"]}
    cell = rows[str(nv)]["cells"][0]
    assert (cell["node_name"], cell["compatible"], rows[str(nv)]["fits"]) == ("rhel10-h100", False, 0)
    assert "rule driver" in cell["reason"] and "nvidia absent" in cell["reason"]

    # errors -> 2 with a message
    r = _whatif("--spec", str(gpu))
    assert r.returncode == 2 and "--features" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1alpha1\ncompatibilities: 5\n")
    r = _whatif("--spec", str(bad), "--features", str(h100))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and r.stdout == ""
