"""Volatile usage values (nodecompat/fleet/volatile.py) are facts of a round, not of a node's profile.

memory.size `available_bytes` (/proc/meminfo MemAvailable) and the free huge page counts
(`hugepages-<size>.free`, memory.hugepages.node `free`: free_hugepages) change on every round of a busy
host. NFD publishes no such value: its source/memory/memory.go reads no free memory at all (NUMA nodes,
swap, NVDIMMs, and hugepages' nr_hugepages only), so these are nodecompat additions, and keeping them out
of the fingerprint changes no NFD semantics. Real `serve --register` daemons on copies of a fixture host
behind a real in-process aggregator: a usage change is no WatchFeatures change, no fetch, no new stored
set; a profile change (MemTotal, nr_hugepages) is; a fleet question reading a usage value is answered
live with the current value, and WatchFleet/WhatIf, which answer from stored sets only, refuse it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support_fleet import Proc, aggregator, start_node
from support_fleet import wait_until as _wait
from support_hosts import copy_fixture

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.engine.spec import parse_spec
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.fleet.volatile import reads_volatile, strip_volatile
from nodecompat.hostroot import HostRoot
from nodecompat.probes.runner import probe_once
from nodecompat.probes.sysctl import SysctlProbe
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import features_pb2, fleet_pb2_grpc, inventory_pb2, node_pb2_grpc

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

HOST = "plain-vm"  # MemAvailable 23000000 kB; 2Mi and 1Gi pools with free_hugepages, globally and on node0
NAMES = ("vm-a", "vm-b")
LEASE_TTL = 3.0  # a registration heartbeat every second


def _spec(expressions: str, feature: str = "memory.size") -> str:
    return ("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: r\n    matchFeatures:\n"
            f"    - feature: {feature}\n      matchExpressions: {expressions}\n")


READS_AVAILABLE = _spec("{available_bytes: {op: Gt, value: ['20000000000']}}")  # 20 GB: the fixture has 23.5
READS_TOTAL = _spec("{total_bytes: {op: Gt, value: ['1']}}")


def _set_line(path: Path, key: str, value: str) -> None:
    text = path.read_text()
    new = re.sub(rf"^{re.escape(key)}:\s+\d+ kB$", f"{key}:       {value} kB", text, count=1, flags=re.M)
    assert new != text, key
    path.write_text(new)


def _set_free_hugepages(root: Path, value: str) -> None:
    for p in [*root.glob("sys/kernel/mm/hugepages/*/free_hugepages"),
              *root.glob("sys/devices/system/node/node*/hugepages/*/free_hugepages")]:
        p.write_text(value + "\n")


# -- the bug on this machine, and the probe level -------------------------------------------------------
def test_two_rounds_on_this_host_give_one_fingerprint() -> None:
    """The bug: MemAvailable moves between any two rounds of a real host (here made sure by touching memory in
    between), and it used to be in the fingerprint, so every round was a 'change'. 64 MiB more are touched until it
    moves (up to 512 MiB): a kernel may serve a first 64 MiB from its per-CPU free lists, which MemFree does not
    count (CI saw MemAvailable unchanged to the byte once)."""
    first = probe_once(HostRoot(Path("/")))
    a = first.features.attributes.get("memory.size")
    assert a is not None
    ballast: list[bytearray] = []
    for _ in range(8):
        ballast.append(bytearray(64 << 20))
        for i in range(0, len(ballast[-1]), 4096):
            ballast[-1][i] = 1
        second = probe_once(HostRoot(Path("/")))
        b = second.features.attributes.get("memory.size")
        assert b is not None
        if a.elements["available_bytes"] != b.elements["available_bytes"]:
            break
    del ballast
    assert a.elements["available_bytes"] != b.elements["available_bytes"]  # two rounds of a host whose usage moved
    assert fingerprint(first.features, first.unknown_features()) == fingerprint(second.features,
                                                                                  second.unknown_features())


def test_usage_values_leave_the_fingerprint_alone_and_sizes_change_it(tmp_path: Path) -> None:
    root = Path(copy_fixture(HOST, tmp_path).root)

    def fp() -> str:
        r = probe_once(HostRoot(root), only=["memory", "hugepages"])
        return fingerprint(r.features, r.unknown_features())

    base = fp()
    _set_line(root / "proc/meminfo", "MemAvailable", "1000000")
    _set_free_hugepages(root, "0")
    assert fp() == base  # usage only: the same profile
    (root / "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").write_text("7\n")
    pools = fp()
    assert pools != base  # nr_hugepages is the profile
    _set_line(root / "proc/meminfo", "MemTotal", "48234496")
    assert fp() not in (base, pools)


def test_counter_sysctls_added_with_serve_sysctl_are_usage_too() -> None:
    """kernel.random.uuid is new on every read, fs.file-nr counts open files: `serve --sysctl` may add them,
    and they stay out of the profile while the settings (vm.max_map_count) stay in."""
    probe = SysctlProbe(extra=["kernel.random.uuid", "fs.file-nr"])
    one, two = (probe.discover(HostRoot(Path("/"))).features for _ in range(2))
    a, b = one.attributes["kernel.sysctl"].elements, two.attributes["kernel.sysctl"].elements
    assert a["kernel.random.uuid"] != b["kernel.random.uuid"] and "vm.max_map_count" in a
    assert fingerprint(one) == fingerprint(two)
    assert strip_volatile(one).attributes["kernel.sysctl"].elements.keys() == a.keys() - {
        "kernel.random.uuid", "fs.file-nr"}
    assert reads_volatile(parse_spec(_spec("{fs.file-nr: {op: Exists}}", "kernel.sysctl"))) == [
        "kernel.sysctl fs.file-nr"]


def test_what_a_spec_reads_is_judged_conservatively() -> None:
    def read(feature: str, body: str) -> list[str]:
        text = ("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: r\n    matchAny:\n    - matchFeatures:\n"
                f"      - feature: {feature}\n        {body}\n")
        return reads_volatile(parse_spec(text))

    assert reads_volatile(parse_spec(READS_AVAILABLE)) == ["memory.size available_bytes"]
    assert reads_volatile(parse_spec(READS_TOTAL)) == []
    assert read("memory.hugepages", "matchExpressions: {hugepages-2Mi.free: {op: Gt, value: ['0']}}") == [
        "memory.hugepages hugepages-2Mi.free"]
    assert read("memory.hugepages", "matchExpressions: {hugepages-2Mi: {op: Gt, value: ['0']}}") == []
    assert read("memory.hugepages.node", "matchExpressions: {free: {op: Gt, value: ['0']}}") == [
        "memory.hugepages.node free"]
    assert read("memory.hugepages.node", "matchExpressions: {total: {op: Gt, value: ['0']}}") == []
    # a name pattern may match a usage value: conservative
    assert read("memory.size", "matchName: {op: In, value: [total_bytes]}") == [
        "memory.size matchName (may match available_bytes)"]
    assert read("kernel.version", "matchExpressions: {major: {op: Gt, value: ['4']}}") == []


# -- real daemons behind a real aggregator --------------------------------------------------------------
@dataclass
class VolFleet:
    nodes: dict[str, Proc]
    roots: dict[str, Path]
    agg: AggregatorDaemon
    address: str


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolFleet]:
    tmp = tmp_path_factory.mktemp("volatile")
    roots = {n: Path(copy_fixture(HOST, tmp / n).root) for n in NAMES}
    with aggregator(lease_ttl=LEASE_TTL, registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(heartbeat=1.0, stale_after=3.0, reconcile_interval=0.2)) as agg:
        address = agg.address  # type: ignore[attr-defined]
        procs = {n: start_node(tmp, n, HOST, root=roots[n], wait=False, args=["--register", address]) for n in NAMES}
        try:
            for p in procs.values():
                p.wait_serving()
            store = agg.store
            assert store is not None
            _wait(lambda: len(store.records()) == 2 and all(r.has_features and r.state == "OK"
                                                              for r in store.records()), 30, "both nodes held")
            yield VolFleet(procs, roots, agg, address)
        finally:
            for p in procs.values():
                p.kill()


def _refresh(p: Proc) -> features_pb2.GetFeaturesResponse:
    with grpc.insecure_channel(p.address) as ch:
        return node_pb2_grpc.NodeServiceStub(ch).GetFeatures(  # type: ignore[no-any-return]
            features_pb2.GetFeaturesRequest(refresh=True, prefixes=["memory."]), timeout=30)


def test_a_usage_change_is_no_change_and_a_usage_question_is_answered_live(vol: VolFleet) -> None:
    agg, store = vol.agg, vol.agg.store
    assert store is not None and agg.sync is not None and agg.sync.push is not None
    a, b = (vol.nodes[n] for n in NAMES)
    assert store.distinct_sets() == 1  # identical hosts: one stored set
    held = store.get(a.address)
    assert held is not None
    fetches = agg.sync.push.fetches
    with grpc.insecure_channel(a.address) as ch:
        watch = ch.unary_stream(
            "/nodecompat.v1.NodeService/WatchFeatures",
            request_serializer=inventory_pb2.WatchFeaturesRequest.SerializeToString,
            response_deserializer=inventory_pb2.WatchFeaturesResponse.FromString,
        )(inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=1.0), timeout=30)
        first = next(watch).features
        assert first.fingerprint == held.fingerprint
        assert "available_bytes" not in first.features.attributes["memory.size"].elements  # the profile only
        _set_line(vol.roots[NAMES[0]] / "proc/meminfo", "MemAvailable", "1000000")  # ~1 GB: under the 20 GB asked
        _set_free_hugepages(vol.roots[NAMES[0]], "0")
        got = _refresh(a)
        # GetFeatures keeps the round's usage values, fresh
        assert got.features.attributes["memory.size"].elements["available_bytes"] == str(1000000 * 1024)
        hb = next(watch)
        while hb.WhichOneof("item") == "heartbeat" and hb.heartbeat.round_id <= first.round_id:
            hb = next(watch)
        watch.cancel()
    assert hb.WhichOneof("item") == "heartbeat" and hb.heartbeat.fingerprint == first.fingerprint  # no change
    new_round = hb.heartbeat.round_id
    _wait(lambda: store.get(a.address).round_id >= new_round, 10, "a's beat with the new round")  # type: ignore[union-attr]
    assert agg.sync.push.fetches == fetches and store.distinct_sets() == 1  # nothing fetched, still shared
    assert store.get(a.address).fingerprint == store.get(b.address).fingerprint  # type: ignore[union-attr]

    with FleetClient(vol.address) as c:
        usage = c.validate(spec_text=READS_AVAILABLE, timeout=20)
        sizes = c.validate(spec_text=READS_TOTAL, timeout=20)
    assert {n.name: (n.source, n.compatible) for n in usage.nodes} == {  # type: ignore[attr-defined]
        NAMES[0]: ("LIVE", False), NAMES[1]: ("LIVE", True)}  # the verdict follows the current value
    assert (usage.summary.from_inventory, usage.summary.live) == (0, 2)  # type: ignore[attr-defined]
    assert {n.source for n in sizes.nodes} == {"INVENTORY"} and all(n.compatible for n in sizes.nodes)  # type: ignore[attr-defined]

    with grpc.insecure_channel(vol.address) as ch:
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            next(stub.WatchFleet(inventory_pb2.WatchFleetRequest(spec=READS_AVAILABLE), timeout=10))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "memory.size available_bytes" in err.value.details() and "LIVE" in err.value.details()
        rows = stub.WhatIf(inventory_pb2.WhatIfRequest(specs=[inventory_pb2.WhatIfSpec(spec=READS_AVAILABLE),
                                                               inventory_pb2.WhatIfSpec(spec=READS_TOTAL)]),
                           timeout=10).rows
    assert rows[0].error.startswith("FAILED_PRECONDITION") and "available_bytes" in rows[0].error
    assert not rows[1].error and rows[1].fits == 2

    # the profile did change: MemTotal -> a new fingerprint, fetched at once, no longer shared
    _set_line(vol.roots[NAMES[0]] / "proc/meminfo", "MemTotal", "48234496")
    _refresh(a)
    _wait(lambda: store.get(a.address).fingerprint != held.fingerprint, 10, "a's new profile held")  # type: ignore[union-attr]
    assert agg.sync.push.fetches > fetches and store.distinct_sets() == 2


def test_an_older_daemon_counting_usage_values_is_renewed_by_its_heartbeats(tmp_path: Path) -> None:
    """A daemon from before volatile values computes its fingerprint over them (one canonical form of the
    whole round). The store recomputes the fingerprint without them, so the daemon's own never matched what
    was held: every heartbeat of its stream 'missed a change' (resubscribe, full set sent again) and every
    push fetch ended 'holds X, announced Y' (fetched again after a backoff, for good). The fingerprint the
    node sent with a set it still reports is the same set: a heartbeat naming it renews the record."""
    import hashlib

    from nodecompat import wire
    from nodecompat.fleet.fingerprint import canonical_bytes, split_identity
    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server.inventory.inventory_sync import InventorySync

    root = Path(copy_fixture(HOST, tmp_path).root)
    rnd = probe_once(HostRoot(root), only=["memory", "hugepages", "system"])
    shared, _ = split_identity(rnd.features)  # the older daemon's fingerprint: usage values in
    old_fp = "sha256:" + hashlib.sha256(canonical_bytes(shared, rnd.unknown_features())).hexdigest()
    assert old_fp != fingerprint(rnd.features, rnd.unknown_features())
    store = FeatureStore()
    sync = InventorySync(lambda: [], store)
    try:
        change = inventory_pb2.FeaturesChange(node_name="old", round_id=1, fingerprint=old_fp,
                                              features=wire.features_to_proto(rnd.features))
        assert sync.apply("10.0.0.9:7000", inventory_pb2.WatchFeaturesResponse(features=change), "")
        held = store.get("10.0.0.9:7000")
        assert held is not None and held.fingerprint != old_fp  # the profile is what is stored
        beat = inventory_pb2.WatchFeaturesResponse(
            heartbeat=inventory_pb2.FeaturesHeartbeat(round_id=2, fingerprint=old_fp))
        assert sync.apply("10.0.0.9:7000", beat, held.fingerprint)  # a renewal, not a missed change
        assert store.get("10.0.0.9:7000").round_id == 2  # type: ignore[union-attr]
        assert store.heartbeat("10.0.0.9:7000", 3, old_fp)  # as a push registration's beat is checked
        assert not store.heartbeat("10.0.0.9:7000", 4, "sha256:" + "0" * 64)  # another one is a change
    finally:
        sync.loop.close()


def test_wire_forms_of_one_kept_set_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older daemon's wire form carries its usage values: each round is a new wire key (store alias) for
    the one profile set, which stays held (its peers share it), so the aliases were never dropped: one
    entry per node per round, for good. They are bounded, oldest first out (an alias only saves a parse)."""
    from nodecompat.fleet import store as store_mod

    monkeypatch.setattr(store_mod, "MAX_ALIASES", 4)
    rnd = probe_once(HostRoot(Path(copy_fixture(HOST, tmp_path).root)), only=["memory"])
    store = store_mod.FeatureStore()
    store.put("peer:1", "peer", rnd.features, None, 0.0, 1)  # keeps the set held
    for i in range(10):
        store.put("old:1", "old", rnd.features, None, 0.0, i, wire_key=f"round-{i}")
    assert store.put_known("round-9", "old:1", "old", (), 0.0, 10) is not None  # the newest are kept
    assert store.put_known("round-0", "old:1", "old", (), 0.0, 11) is None  # the oldest went
    assert len(store._aliases) == 4


def test_a_state_file_written_before_volatile_values_is_held_again(tmp_path: Path) -> None:
    """An aggregator from before volatile values kept them in its sets, so its state file's sets (and node
    fingerprints) hold memory.size available_bytes. Read back after the upgrade, the store keeps the profile
    (another fingerprint): each node was then dropped 'feature set not held' and the restart held no features
    at all. They are held under the profile's fingerprint, the file's one kept as what the node announced."""
    import hashlib

    from nodecompat.features import Features
    from nodecompat.fleet.fingerprint import canonical_bytes
    from nodecompat.v1 import snapshot_pb2

    f = Features()
    f.add_attributes("memory.size", {"total_bytes": "8589934592", "available_bytes": "4294967296"})
    raw = canonical_bytes(f)
    old_fp = "sha256:" + hashlib.sha256(raw).hexdigest()
    snap = snapshot_pb2.InventorySnapshot(version=1)
    snap.sets.add(fingerprint=old_fp, canonical=raw)
    for i in range(3):
        n = snap.nodes.add(name=f"n{i}", address=f"127.0.2.{i + 1}:7000", fingerprint=old_fp, principal="key:x",
                           lease_ttl_seconds=60, round_id=1)
        n.probed_at.seconds = 1_700_000_000
    state = tmp_path / "state"
    state.write_bytes(snap.SerializeToString())
    with aggregator(state_file=str(state), registration=RegistrationPolicy(allow_unauthenticated=True),
                    sync=SyncConfig(), check_new_nodes=False) as agg:
        store = agg.store
        assert store is not None
        held = {r.name: r for r in store.records() if r.has_features}
        assert sorted(held) == ["n0", "n1", "n2"]
        assert store.distinct_sets() == 1
        assert {(r.fingerprint, r.announced) for r in held.values()} == {(fingerprint(f), old_fp)}
        assert store.heartbeat("127.0.2.1:7000", 2, old_fp)  # the node's own (older daemon) beat renews it


def test_a_usage_change_pokes_no_registration_beat(tmp_path: Path) -> None:
    """The hub's on_change is what sends a --register daemon's heartbeat at once (server/node/registration.py
    poke): rounds that differ only in usage values must not call it (each would be a beat, then a fetch, every
    round); a profile change must. Real probe rounds of a fixture host copy."""
    from nodecompat.server.node.feature_watch import FeatureWatchHub

    root = Path(copy_fixture(HOST, tmp_path).root)
    hub = FeatureWatchHub("vm-a")
    pokes: list[int] = []
    hub.on_change.append(lambda: pokes.append(1))

    def round_() -> None:
        hub.on_round(probe_once(HostRoot(root), only=["memory", "hugepages"]))

    round_()
    assert len(pokes) == 1  # the first round is a change
    for value in ("1000000", "2000000", "3000000"):
        _set_line(root / "proc/meminfo", "MemAvailable", value)
        _set_free_hugepages(root, value[0])
        round_()
    assert len(pokes) == 1  # usage only: no beat
    _set_line(root / "proc/meminfo", "MemTotal", "48234496")
    round_()
    assert len(pokes) == 2
