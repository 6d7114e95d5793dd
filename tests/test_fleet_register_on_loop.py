"""RegisterNode answered on the aggregator's event loop (FleetService.register_on_loop, a call fast path of
server/runtime/runtime.py gated by runtime/loop_gate.py): a real in-process aggregator on a loopback port, real gRPC
clients, and a real gRPC server standing in for the node's WatchFeatures (the push model's one-shot fetch).

The runtime counts the calls a fast path answered (runtime.gate.answers), so each test says which path
answered: a renewal on the loop renews the lease (the node outlives its first lease) and refreshes the
inventory record without a fetch; a changed fingerprint still makes the aggregator fetch, and a node whose
fingerprint is held is still adopted without one; a wrong lease key is PERMISSION_DENIED and a malformed
request INVALID_ARGUMENT, from the loop as from a worker; a lease table another thread holds makes the fast
path decline (Health keeps answering meanwhile) and the worker answers; a lagging loop closes the gate.
(A registration flood against a real aggregator process, Health answering throughout, with every
RegisterNode now on this path: tests/test_dos_floods.py.)"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from support_daemon import health_status
from support_fleet import aggregator
from support_fleet import wait_until as _wait

from nodecompat import wire
from nodecompat.features import Features
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.server.fleet.aggregator import AggregatorDaemon
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, RegistrationPolicy
from nodecompat.server.runtime.loop_gate import LoopGate
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, inventory_pb2

OPEN = RegistrationPolicy(allow_unauthenticated=True)  # the lease key binds renewals


def _features(major: str, nodename: str) -> Features:
    f = Features()
    f.add_attributes("kernel.version", {"major": major})
    f.add_attributes("system.name", {"nodename": nodename})
    return f


class FakeNode:
    """A gRPC server answering WatchFeatures with `self.features` (one message, as a daemon does for `once`)."""

    def __init__(self, features: Features) -> None:
        self.features = features
        self.served = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.unary_stream_rpc_method_handler(
            self._watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString,
            response_serializer=inventory_pb2.WatchFeaturesResponse.SerializeToString)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {"WatchFeatures": handler}),))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _watch(self, request: Any, context: Any) -> Iterator[inventory_pb2.WatchFeaturesResponse]:
        self.served += 1
        change = inventory_pb2.FeaturesChange(node_name="n1", round_id=1, fingerprint=fingerprint(self.features),
                                              features=wire.features_to_proto(self.features))
        change.probed_at.GetCurrentTime()
        yield inventory_pb2.WatchFeaturesResponse(features=change)


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    node = FakeNode(_features("6", "n1"))
    try:
        yield node
    finally:
        node.server.stop(0)


@pytest.fixture
def agg() -> Iterator[AggregatorDaemon]:
    with aggregator(lease_ttl=30.0, registration=OPEN,
                    sync=SyncConfig(heartbeat=1.0, stale_after=30.0, reconcile_interval=0.2)) as a:
        yield a


def _request(name: str, address: str, features: Features | None = None, ttl: float = 0.0
             ) -> fleet_pb2.RegisterNodeRequest:
    req = fleet_pb2.RegisterNodeRequest(name=name, address=address, ttl_seconds=ttl)
    if features is not None:
        req.round_id = 1
        req.fingerprint = fingerprint(features)
        req.probed_at.GetCurrentTime()
        req.identity["system.name"].elements["nodename"] = name
    return req


def _code(stub: fleet_pb2_grpc.FleetServiceStub, req: fleet_pb2.RegisterNodeRequest, key: str) -> grpc.StatusCode:
    try:
        stub.RegisterNode(req, timeout=10, metadata=((LEASE_KEY_METADATA, key),))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_a_renewal_on_the_loop_renews_the_lease(agg: AggregatorDaemon) -> None:
    """A 1 s lease (the aggregator's MIN_LEASE_TTL) renewed every 0.25 s on the loop outlives it; left alone
    it lapses."""
    key = secrets.token_hex(16)
    with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        for _ in range(8):  # 2 s of renewals: twice the lease
            assert _code(stub, _request("n1", "127.0.0.1:9", ttl=1.0), key) == grpc.StatusCode.OK
            time.sleep(0.25)
        assert [n.name for n in agg.inventory.nodes()] == ["n1"]
        assert agg.runtime.gate.answers == 8  # every call was answered on the loop, none by a worker
        _wait(lambda: not agg.inventory.nodes(), what="the lease to lapse", timeout=10)


def test_pushed_state_on_the_loop_fetches_refreshes_and_adopts(agg: AggregatorDaemon, fake_node: FakeNode) -> None:
    assert agg.sync is not None and agg.sync.push is not None and agg.store is not None
    push, store = agg.sync.push, agg.store
    key = secrets.token_hex(16)
    f1 = fake_node.features
    with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        assert _code(stub, _request("n1", fake_node.address, f1), key) == grpc.StatusCode.OK
        _wait(lambda: (r := store.get(fake_node.address)) is not None and r.fingerprint == fingerprint(f1),
              what="the first fetch")
        assert push.fetches == 1 and fake_node.served == 1
        heard = store.get(fake_node.address).heard_at  # type: ignore[union-attr]
        time.sleep(0.05)
        assert _code(stub, _request("n1", fake_node.address, f1), key) == grpc.StatusCode.OK  # same state
        assert store.get(fake_node.address).heard_at > heard  # type: ignore[union-attr]
        assert push.fetches == 1 and fake_node.served == 1  # a heartbeat: no fetch
        f2 = fake_node.features = _features("7", "n1")  # the node's features change
        assert _code(stub, _request("n1", fake_node.address, f2), key) == grpc.StatusCode.OK
        _wait(lambda: store.get(fake_node.address).fingerprint == fingerprint(f2),  # type: ignore[union-attr]
              what="the fetch of the changed set")
        assert push.fetches == 2 and fake_node.served == 2
        # another node announcing the held set is adopted from it, with its own identity, without a fetch
        assert _code(stub, _request("n2", "127.0.0.2:9", _features("7", "n2")), secrets.token_hex(16)) == \
            grpc.StatusCode.OK
        rec = store.get("127.0.0.2:9")
        assert rec is not None and rec.fingerprint == fingerprint(f2)
        assert rec.identity == (("system.name", "nodename", "n2"),)
        assert push.adopted == 1 and push.fetches == 2 and fake_node.served == 2
        assert agg.runtime.gate.answers == 4


def test_refusals_on_the_loop_keep_their_status(agg: AggregatorDaemon) -> None:
    key = secrets.token_hex(16)
    with grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        assert _code(stub, _request("n1", "127.0.0.1:9"), key) == grpc.StatusCode.OK
        assert _code(stub, _request("n1", "127.0.0.1:9"), "another key") == grpc.StatusCode.PERMISSION_DENIED
        assert _code(stub, _request("n1", "127.0.0.1:10"), "") == grpc.StatusCode.PERMISSION_DENIED  # no key
        assert _code(stub, _request("n2", "127.0.0.1:9"), "k2") == grpc.StatusCode.ALREADY_EXISTS  # n1's address
        bad = _request("n3", "127.0.0.1:11", _features("6", "n3"))
        bad.fingerprint = "sha256:not-hex"
        assert _code(stub, bad, "k3") == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(stub, _request("", "127.0.0.1:12"), "k4") == grpc.StatusCode.INVALID_ARGUMENT
        assert _code(stub, _request("n5", "0.0.0.0:12"), "k5") == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:  # bytes that are no RegisterNodeRequest
            ch.unary_unary("/nodecompat.v1.FleetService/RegisterNode")(b"\xff\xff\xff", timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [(n.name, n.address) for n in agg.inventory.nodes()] == [("n1", "127.0.0.1:9")]
        assert agg.runtime.gate.answers == 1  # the refusals came from the loop too: no answer counted
        assert agg.runtime.inflight == 0 and agg.runtime.refused == 0


def test_a_held_lease_table_sends_the_call_to_a_worker_and_health_answers(agg: AggregatorDaemon) -> None:
    """While another thread holds the lease table's lock the fast path declines instead of waiting on the
    loop: Health answers meanwhile, and the renewal is answered by a worker once the lock is free."""
    with grpc.insecure_channel(agg.address) as ch, futures.ThreadPoolExecutor(1) as pool:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        with agg.inventory._lock:
            pending = pool.submit(_code, stub, _request("n1", "127.0.0.1:9"), "k1")
            time.sleep(0.3)  # the call reaches the loop, which declines, and a worker, which waits
            assert health_status(agg.address, timeout=2.0) == "SERVING"  # type: ignore[attr-defined]
            assert not pending.done()
        assert pending.result(10) == grpc.StatusCode.OK
        assert agg.runtime.gate.answers == 0
        assert [n.name for n in agg.inventory.nodes()] == ["n1"]


def test_the_gate_closes_while_the_loop_lags_and_reopens() -> None:
    """A callback that holds the loop for 0.3 s makes the probe queued behind it late: the next call fast
    path is declined (and counted); the probe that decline starts runs at once, so the one after is let in."""
    loop = asyncio.new_event_loop()
    gate = LoopGate(loop, limit=0.1)
    seen: list[bool] = []

    async def scenario() -> None:
        loop.call_soon(time.sleep, 0.3)  # queued before the probe: the probe waits for it
        seen.append(gate.open())  # last lag 0: open; starts a probe
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(gate.open())  # the probe waited 0.3 s: closed; starts another probe
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(gate.open())

    thread = threading.Thread(target=loop.run_until_complete, args=(scenario(),))
    thread.start()
    thread.join(10)
    loop.close()
    assert seen == [True, False, True]
    assert gate.declined == 1


def test_the_gate_lets_in_a_bounded_burst_between_two_probes() -> None:
    """Calls that arrive together are served in one loop iteration, before the probe can see the lag they
    cause: at most `burst` are let in until the probe has run."""
    loop = asyncio.new_event_loop()
    gate = LoopGate(loop, limit=0.1, burst=5)
    seen: list[list[bool]] = []

    async def scenario() -> None:
        seen.append([gate.open() for _ in range(8)])  # one iteration: 5 let in, 3 declined
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append([gate.open() for _ in range(2)])  # the probe ran (no lag): let in again

    thread = threading.Thread(target=loop.run_until_complete, args=(scenario(),))
    thread.start()
    thread.join(10)
    loop.close()
    assert seen == [[True] * 5 + [False] * 3, [True, True]]
    assert gate.declined == 3
