"""Review findings (hostile inputs against what landed on 2026-12-01), each with real parts:
a real sysfs binary attribute read through a probe round, a real etcd holding a hostile shard document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from etcd3gw import Etcd3Client
from support_etcd import Etcd, etcd, wait_for  # noqa: F401 (fixture)

from nodecompat.features import Features
from nodecompat.fleet.fingerprint import canonical_bytes, fingerprint
from nodecompat.fleet.store import FeatureStore
from nodecompat.hostroot import HostRoot
from nodecompat.probes.round_host import RoundHost
from nodecompat.server.inventory.etcd_kv import EtcdEndpoints
from nodecompat.server.inventory.fleet_members import FleetNode
from nodecompat.server.inventory.inventory_shards import InventoryShards
from nodecompat.server.inventory.shard_docs import NodeDoc

# sysfs binary attributes (kernfs bin files) hand out at most one page per read(2) whatever their size
# (fs/kernfs/file.c, kernfs_file_read_iter: len = min(count, PAGE_SIZE)), while their st_size is the whole.
BIN_ATTRIBUTE = "/sys/kernel/btf/vmlinux"


def test_round_reads_a_sysfs_binary_attribute_whole_as_hostroot() -> None:
    if not os.path.exists(BIN_ATTRIBUTE) or os.stat(BIN_ATTRIBUTE).st_size <= os.sysconf("SC_PAGE_SIZE"):
        pytest.skip(f"{BIN_ATTRIBUTE}: no sysfs binary attribute larger than a page on this kernel")
    host = HostRoot(Path("/"))
    whole = host.read_bytes(BIN_ATTRIBUTE)
    assert whole is not None and len(whole) == os.stat(BIN_ATTRIBUTE).st_size
    got = RoundHost.over(host).read_bytes(BIN_ATTRIBUTE)
    assert got is not None and len(got) == len(whole)  # was one page: the short-read shortcut stopped there
    assert got == whole


def _endpoints(host: str, port: str) -> EtcdEndpoints:
    """The readers' etcd: idle watch streams re-opened every 0.25 s (WATCH_READ_TIMEOUT is 1 s), so stop()
    waits that long at most for each of the shards' watches."""
    return EtcdEndpoints([(host, int(port))], watch_read_timeout=0.25)


def _client(e: Etcd) -> Etcd3Client:
    host, port = e.endpoint.rsplit(":", 1)
    return Etcd3Client(host=host, port=int(port), api_path="/v3/")


@pytest.mark.parametrize("hostile", [b"[]", b'"x"', b"[" * 9000 + b"]" * 9000, b"1"])
def test_a_hostile_shard_document_does_not_hide_the_others(etcd: Etcd, hostile: bytes) -> None:  # noqa: F811
    """A value under P shards/nodes/ that is JSON but not an object (or nested past the recursion limit)
    is ignored like any other unreadable document; the valid documents beside it are still applied."""
    prefix = f"/review-{len(hostile)}-{hostile[:1].hex()}/"
    feats = Features.from_nfd({"flags": {"cpu.cpuid": {"elements": {"AVX2": ""}}}, "attributes": {}, "instances": {}})
    fp = fingerprint(feats)
    address = "127.0.0.1:1"
    c = _client(etcd)
    lease = c.lease(ttl=120)  # the other replica's: its key and documents live on it
    c.put(f"{prefix}shards/replicas/other", '{"id": "other"}', lease=lease)
    c.put(f"{prefix}shards/sets/{fp}/other", canonical_bytes(feats).decode())
    c.put(f"{prefix}shards/nodes/10.0.0.9:1", hostile.decode(), lease=lease)  # before the readers start: the first load
    doc = NodeDoc("other", "n1", fp, (), 1.0, 1, "OK", "")
    c.put(f"{prefix}shards/nodes/{address}", doc.encode().decode(), lease=lease)
    host, port = etcd.endpoint.rsplit(":", 1)
    store = FeatureStore()
    members = [FleetNode("n1", address), FleetNode("n9", "10.0.0.9:1")]
    shards = InventoryShards(_endpoints(host, port), prefix, lambda: members, store, replica_id="me")
    shards.start()
    try:
        wait_for("the valid document applied beside a hostile one", lambda: store.get(address) is not None,
                 timeout=20.0)
        c.put(f"{prefix}shards/nodes/10.0.0.9:1", hostile.decode(), lease=lease)  # as a watch event too
        doc2 = NodeDoc("other", "n1", fp, (), 2.0, 2, "OK", "")
        c.put(f"{prefix}shards/nodes/{address}", doc2.encode().decode(), lease=lease)
        wait_for("a later document still applied", lambda: (r := store.get(address)) is not None
                 and r.probed_at == 2.0, timeout=20.0)
    finally:
        shards.stop()
    assert json.loads(canonical_bytes(feats))  # the set is what the fingerprint names


def test_shard_readers_believe_only_leased_keys_of_live_owners_with_sane_probe_times(etcd: Etcd) -> None:  # noqa: F811
    """A replica key or node document written without a lease would never vanish (a dead node kept fresh,
    a ghost replica taking every replica's share of nodes away): treated as absent. A document whose owner
    is not a live replica, or whose probed_at is not finite or lies hours ahead, is not applied."""
    import time

    prefix = "/review-liveness/"
    feats = Features.from_nfd({"flags": {"cpu.cpuid": {"elements": {"AVX2": ""}}}, "attributes": {}, "instances": {}})
    fp = fingerprint(feats)
    c = _client(etcd)
    lease = c.lease(ttl=120)
    c.put(f"{prefix}shards/replicas/other", '{"id": "other"}', lease=lease)
    c.put(f"{prefix}shards/replicas/ghost", '{"id": "ghost"}')  # no lease
    c.put(f"{prefix}shards/sets/{fp}/other", canonical_bytes(feats).decode())
    now = time.time()
    docs = {
        "10.0.0.1:1": (NodeDoc("other", "good", fp, (), now, 1, "OK", "").encode(), lease),
        "10.0.0.2:1": (NodeDoc("ghost", "ghosts", fp, (), now, 1, "OK", "").encode(), lease),
        "10.0.0.3:1": (NodeDoc("other", "unleased", fp, (), now, 1, "OK", "").encode(), None),
        "10.0.0.4:1": (NodeDoc("other", "future", fp, (), now + 3600, 1, "OK", "").encode(), lease),
        "10.0.0.5:1": (NodeDoc("other", "infinite", fp, (), now, 1, "OK", "").encode().replace(
            str(now).encode(), b"Infinity"), lease),
    }
    for address, (raw, doc_lease) in docs.items():
        c.put(f"{prefix}shards/nodes/{address}", raw.decode(), lease=doc_lease)
    host, port = etcd.endpoint.rsplit(":", 1)
    store = FeatureStore()
    members = [FleetNode(f"n{i}", a) for i, a in enumerate(docs)]
    shards = InventoryShards(_endpoints(host, port), prefix, lambda: members, store, replica_id="me")
    shards.start()
    try:
        assert shards.replicas() == frozenset({"me", "other"})  # the lease-less ghost is no replica
        wait_for("the live owner's leased document applied", lambda: store.get("10.0.0.1:1") is not None,
                 timeout=20.0)
        time.sleep(1.5)  # more publishing/applying rounds (PUBLISH_INTERVAL 0.5 s): nothing else comes
        assert [a for a in docs if store.get(a) is not None] == ["10.0.0.1:1"]
        c.put(f"{prefix}shards/replicas/ghost2", '{"id": "ghost2"}')  # as a watch event too
        c.put(f"{prefix}shards/nodes/10.0.0.1:1", docs["10.0.0.1:1"][0].decode())  # re-put without its lease
        time.sleep(1.5)
        assert shards.replicas() == frozenset({"me", "other"})
    finally:
        shards.stop()
