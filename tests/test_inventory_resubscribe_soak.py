"""Liveness of the inventory's streams when they are killed over and over (server/inventory/inventory_sync.py).

200 nodes, each its own loopback address (its own connection), served by one real grpc.aio server; five times every
open stream is ended by the server (alternately with UNAVAILABLE and with a plain end of the call), and every node
must come back: the server sees 200 streams open again, the sync has counted one more established stream a node,
and every record is OK again. Both clients of the streams (SyncConfig.watch_transport). No timing is asserted:
each round has a generous deadline computed from the backoff settings (a stream that delivered a message retries
after at most BACKOFF_MIN; one that fails before, after at most BACKOFF_MAX; the connecting slots are released at the
first message or after connect_slot_seconds), so only a node that never comes back fails the test. The same
situation at 10,000 nodes under load is bench/bench_inventory.py's restart rows (docs/inventory.md).
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator

import grpc
import pytest
from support_etcd import wait_for
from support_fleet import free_port
from test_inventory_push_fetch import features_message

from nodecompat.fleet.store import STATE_OK, FeatureStore
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import BACKOFF_MAX, BACKOFF_MIN, InventorySync, SyncConfig
from nodecompat.v1 import inventory_pb2

NODES = 200
ROUNDS = 5


class KillingServer:
    """A grpc.aio WatchFeatures server on its own thread and loop; kill() ends every open stream."""

    def __init__(self) -> None:
        self.first, self.fp = features_message("soak")
        self.beat = inventory_pb2.WatchFeaturesResponse(heartbeat=inventory_pb2.FeaturesHeartbeat(
            round_id=1, fingerprint=self.fp, heartbeat_seconds=1)).SerializeToString()
        self.open = 0
        self.opened = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.generation: asyncio.Event | None = None
        self.abort_next = True
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the server did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve(ready))

    async def _serve(self, ready: threading.Event) -> None:
        self.generation = asyncio.Event()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
            "WatchFeatures": grpc.unary_stream_rpc_method_handler(self._watch, response_serializer=None)}),))
        server.add_insecure_port(f"0.0.0.0:{self.port}")
        await server.start()
        self.server = server
        ready.set()
        await server.wait_for_termination()

    async def _watch(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        assert self.generation is not None
        gen = self.generation
        self.open += 1
        self.opened += 1
        try:
            yield self.first
            while not gen.is_set():
                try:
                    await asyncio.wait_for(gen.wait(), 0.5)
                except TimeoutError:
                    yield self.beat
            if self.abort_next:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the node restarts")
        finally:
            self.open -= 1

    def kill(self, abort: bool) -> None:
        """End every stream open now (UNAVAILABLE when `abort`, else a plain end of the call)."""
        def swap() -> None:
            assert self.generation is not None
            self.abort_next = abort
            old, self.generation = self.generation, asyncio.Event()
            old.set()
        self.loop.call_soon_threadsafe(swap)

    def stop(self) -> None:
        """Stop the server; its loop is stopped after 10 s whatever the server does. Seen here (h2, 1 run in ~4):
        a few handlers of calls whose connections the client had reset and closed stayed open, and grpc.aio's
        stop(0) did not return (no ESTABLISHED connection left, the handlers never cancelled). The loop's thread
        ends when the server has stopped (_serve returns at wait_for_termination, the loop with it, before the
        stop(0) coroutine's own future is resolved): wait for the thread, not that future, which waited its 10 s
        every time."""
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop)
        self.thread.join(10)
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_every_node_comes_back_after_its_streams_are_killed_again_and_again(transport: str) -> None:
    server = KillingServer()
    members = [FleetNode(f"soak-{i:03d}", f"127.1.{i // 250}.{1 + i % 250}:{server.port}", {}, "file")
               for i in range(NODES)]
    store = FeatureStore()
    config = SyncConfig(heartbeat=1.0, stale_after=30.0, reconcile_interval=0.2, watch_transport=transport)
    # a round's deadline: every connecting slot's worth of nodes may wait connect_slot_seconds for the one before
    # it, and a node whose attempt fails before any message backs off up to BACKOFF_MAX, twice; plus 60 s of slack
    # for a loaded machine. Liveness, not speed: the rounds normally take a second or two.
    waves = math.ceil(NODES / config.max_connecting)
    bound = 2 * BACKOFF_MAX + waves * config.connect_slot_seconds + BACKOFF_MIN + 60.0
    sync = InventorySync(lambda: members, store, config=config)

    def all_back(connects: int) -> bool:
        recs = store.records()
        return (server.open == NODES and sync.connects >= connects and len(recs) == NODES
                and all(r.state == STATE_OK and r.fingerprint == server.fp for r in recs))

    try:
        sync.start()
        wait_for("every node subscribed", lambda: all_back(NODES), bound)
        for r in range(1, ROUNDS + 1):
            server.kill(abort=r % 2 == 1)
            wait_for(f"round {r}: every stream ended by the server", lambda: server.open < NODES, bound)
            wait_for(f"round {r}: every node back ({transport})", lambda r=r: all_back(NODES * (r + 1)), bound)
        assert server.opened >= NODES * (ROUNDS + 1)
    finally:
        sync.stop()
        server.stop()
