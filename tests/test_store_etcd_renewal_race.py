"""Two renewals of one registration through one replica at once (server/inventory/store_etcd.py claim): after an etcd
outage the replica writes the renewal it kept (its watch thread, _flush_pending) while the node's next heartbeat
arrives (an RPC thread); any two heartbeats may overlap the same way. Each renewal grants a lease, moves the node's
keys onto it in a transaction, then revokes the lease this replica granted before. When the first transaction's
writer noted its lease after the second had, it revoked the second's lease, the one holding the keys: etcd deleted
the node, and every replica dropped it until the next heartbeat (tests/test_store_etcd_outage.py: edge1 missing
from both replicas' listings right after etcd came back, under load). A real etcd; the interleaving (first
transaction, second renewal whole, then the first's bookkeeping) is made by holding the first renewal's thread
right after its transaction returns."""

from __future__ import annotations

import threading
import uuid

from etcd3gw import Etcd3Client
from support_etcd import Etcd, etcd  # noqa: F401 (fixture)

from nodecompat.server.inventory.registration_store import StoredLease
from nodecompat.server.inventory.store_etcd import EtcdRegistrationStore, parse_store_url


def stored(e: Etcd, prefix: str) -> dict[str, int]:
    """key under prefix -> the lease it is bound to, as etcd holds them."""
    host, port = e.endpoint.rsplit(":", 1)
    client = Etcd3Client(host=host, port=int(port), api_path="/v3/")
    return {meta["key"].decode()[len(prefix):]: int(meta.get("lease", 0)) for _v, meta in client.get_prefix(prefix)}


def test_overlapping_renewals_of_one_node_leave_it_in_the_store(etcd: Etcd) -> None:  # noqa: F811
    prefix = f"/race-{uuid.uuid4().hex}/"
    store = EtcdRegistrationStore(parse_store_url(etcd.url), prefix)
    lease = StoredLease("n1", "127.0.0.1:7001", {}, "anonymous", 30.0)
    store.claim(lease)
    assert set(stored(etcd, prefix)) == {"nodes/n1", "addresses/127.0.0.1:7001"}

    txn = store.etcd.txn
    first = threading.current_thread()
    second_done = threading.Event()

    def txn_then_wait(body):  # type: ignore[no-untyped-def]
        resp = txn(body)
        if threading.current_thread() is first and not second_done.is_set():
            renewal = threading.Thread(target=lambda: (store.claim(lease), second_done.set()))
            renewal.start()  # the second renewal runs whole between this transaction and its bookkeeping
            renewal.join(30)
        return resp

    store.etcd.txn = txn_then_wait  # type: ignore[method-assign]
    store.claim(lease)
    assert second_done.is_set()
    held = stored(etcd, prefix)
    assert set(held) == {"nodes/n1", "addresses/127.0.0.1:7001"}, f"the node left etcd: {held}"
    assert len(set(held.values())) == 1 and 0 not in held.values()  # both on one live lease
    store.stop()
