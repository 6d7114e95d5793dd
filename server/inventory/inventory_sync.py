"""The aggregator's live inventory: one WatchFeatures stream per known node, feeding the FeatureStore.

Runs on its own grpc.aio event loop thread ("inventory-aio"), so it costs a coroutine per node, not a
thread, and is independent of how the servicers run. Every `reconcile_interval` it compares the
membership (nodes file, DNS, registrations: server/inventory/fleet_nodes.py) with its subscriptions: new nodes
get a subscriber, departed nodes are cancelled and removed from the store (LEFT).

A subscriber (re)connects with at most `max_connecting` streams being set up at once (bounded
concurrency: a 10,000-node resubscribe after a restart does not open 10,000 handshakes at once; a stream
holds its slot until its first message or `connect_slot_seconds`, so dead nodes do not hold it up), with
exponential backoff and jitter between attempts (0.2 s doubling to 30 s). A node whose stream fails
is UNREACHABLE; one whose stream is open but silent past `stale_after` (default 3 heartbeats + 1 s) is
STALE; both keep their last features (they are what ValidateFleet re-checks live). The daemon's
fingerprint claim decides nothing: the store recomputes it. A reconnect sends the fingerprint held,
so an unchanged node answers with a message without features.

Registrations that announce their feature state in their heartbeats (the push model) get no stream: with
`push`, those nodes are kept by PushedNodes (server/inventory/inventory_push.py), which fetches their features once per
change through this object's client of WatchFeatures (open_watch) and message handling; the stale timer applies
their own timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from nodecompat import wire
from nodecompat.fleet.fingerprint import IDENTITY
from nodecompat.fleet.store import STATE_OK, STATE_STALE, STATE_UNREACHABLE, FeatureStore, StoreFull
from nodecompat.probes.runner import ProbeRound
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.server.inventory.node_channel import (  # re-exported: their home before node_channel.py
    CHANNEL_OPTIONS,
    MAX_FEATURES_MESSAGE_BYTES,
    channel_target,
    client_interceptors,
)
from nodecompat.server.inventory.watch_transport import GrpcWatch, choose_h2, with_deadline
from nodecompat.server.runtime.task_outcome import forget_outcome
from nodecompat.server.tls import ClientTls
from nodecompat.v1 import inventory_pb2

if TYPE_CHECKING:
    from nodecompat.server.h2.call import H2Options
    from nodecompat.server.h2.watch import H2Watch
    from nodecompat.server.inventory.inventory_push import PushedNodes

log = logging.getLogger(__name__)

BACKOFF_MIN, BACKOFF_MAX = 0.2, 30.0
@dataclass
class SyncConfig:
    heartbeat: float = 10.0  # s, asked of every daemon
    stale_after: float = 0.0  # s without a message -> STALE; 0: 3 heartbeats + 1 s
    max_connecting: int = 64  # streams being established at once
    # A stream holds its connecting slot until its first message or this many seconds, whichever is first:
    # a node that accepts TCP but never answers (gRPC's connect timeout is 20 s) does not hold up the rest
    # of a resubscribe; it keeps trying outside the bound.
    connect_slot_seconds: float = 2.0
    reconcile_interval: float = 1.0  # s between membership checks
    # the client of the streams and push fetches (server/inventory/watch_transport.py): "h2" (server/h2/watch.py, no
    # gRPC core channel: ~6 KB a streamed node against ~54 KB; TLS from the PEM files of watch_tls: given only
    # `credentials`, the sync uses grpc and says so once) or "grpc" (a gRPC core channel each)
    watch_transport: str = "h2"
    watch_tls: ClientTls | None = None

    @property
    def stale_timeout(self) -> float:
        return self.stale_after or 3 * self.heartbeat + 1.0


class InventorySync:
    def __init__(
        self,
        members: Callable[[], list[FleetNode]],
        store: FeatureStore,
        credentials: grpc.ChannelCredentials | None = None,
        config: SyncConfig | None = None,
        on_reported_name: Callable[[str, str], None] | None = None,
        push: bool = False,
    ) -> None:
        """push: registrations that announce a fingerprint are kept without a stream (PushedNodes, `push`)."""
        self.members = members
        self.store = store
        self.credentials = credentials
        self.config = config or SyncConfig()
        self.on_reported_name = on_reported_name
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._nodes: dict[str, FleetNode] = {}
        self._restored: set[str] = set()  # note_restored(): looked at by the first reconcile only
        # what the last reconcile acted on: the next one with the same members and pushed addresses, no restored
        # address and no note_node since has nothing to do (10,000 members: ~7 ms a second saved)
        self._seen: tuple[list[FleetNode], set[str]] | None = None
        self._connecting: asyncio.Semaphore | None = None
        self._main: asyncio.Future[Any] | None = None
        self._interceptors: list[Any] | None = None  # client tracing interceptors, decided once at start()
        self._h2: H2Options | None = None  # SyncConfig.watch_transport "h2": decided once at start()
        self._h2_watch: type[H2Watch] | None = None
        self.connects = 0  # streams established (counts reconnects)
        self.slots_held = 0  # connecting slots held now (_Slot): streams being opened
        self.push: PushedNodes | None = None
        if push:
            from nodecompat.server.inventory.inventory_push import PushedNodes

            self.push = PushedNodes(self)

    # -- lifecycle (any thread) ----------------------------------------------------------------------
    def start(self) -> None:
        self._interceptors = client_interceptors()
        # h2 unless it cannot be (TLS credentials without their PEM files: grpc, one WARNING); hyperframe and hpack
        # are imported for h2 only
        self._h2 = choose_h2(self.config.watch_transport, self.config.watch_tls, self.credentials is not None,
                             self._interceptors is not None, MAX_FEATURES_MESSAGE_BYTES)
        if self._h2 is not None:
            from nodecompat.server.h2 import watch as h2_watch

            self._h2_watch = h2_watch.H2Watch
        self._thread = threading.Thread(target=self.loop.run_forever, name="inventory-aio", daemon=True)
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self.loop)  # type: ignore[assignment]

    def stop(self) -> None:
        if self._thread is None:
            return

        async def shutdown() -> None:
            tasks = [*self._tasks.values(), *(self.push.tasks() if self.push is not None else [])]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # each closes its channel (_subscribe)
            # A cancelled task's CancelledError holds its frames, a grpc.aio call in their locals, and the call
            # gRPC core's channel and connection (every stream's still ESTABLISHED seconds after stop() returned):
            # dropped with the tasks, the calls are freed here and core closes their connections.
            for t in tasks:
                forget_outcome(t)
            self._tasks.clear()

        if self._main is not None:
            self._main.cancel()
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        except Exception:
            log.exception("inventory sync shutdown")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._thread = None

    def note_restored(self, addresses: Iterable[str]) -> None:
        """Addresses the store holds from a snapshot (inventory_snapshot.load_snapshot); call before start(). The
        first reconcile removes those that are no longer members (dropped from the nodes file after the load), as
        it removes a departed member: it knows only the nodes it has seen in the membership."""
        self._restored.update(addresses)

    def subscriptions(self) -> int:
        return len(self._tasks)

    def resubscribing(self) -> bool:
        """True while every connecting slot is held (`max_connecting` streams being opened, none has its first
        message yet): a wave of (re)subscriptions such as an aggregator's start, not a few dead nodes retrying.
        Any thread (reads one int)."""
        return self.slots_held >= self.config.max_connecting

    # -- the loop ------------------------------------------------------------------------------------
    async def _run(self) -> None:
        self._connecting = asyncio.Semaphore(self.config.max_connecting)
        self._seen = None  # this run's first reconcile is a whole one (stop() drops the tasks)
        while True:
            try:
                self._reconcile()
                self._mark_stale()
            except Exception:
                log.exception("inventory reconcile failed")
            await asyncio.sleep(min(self.config.reconcile_interval, self.config.stale_timeout / 4))

    def _reconcile(self) -> None:
        members = self.members()
        pushed = self.push.addresses() if self.push is not None else set()
        if not self._restored and self._seen is not None and self._seen[1] == pushed and self._seen[0] == members:
            return  # as the last one left it: every member has its stream (or is pushed), no departed node
        self._seen = (list(members), pushed)  # a copy: members() may hand out a list it changes later
        current = {n.address: n for n in members}
        known, self._restored = self._nodes.keys() | self._restored, set()
        for address in [a for a in known if a not in current]:
            task = self._tasks.pop(address, None)
            if task is not None:
                task.cancel()
            self._nodes.pop(address, None)
            if self.push is not None:
                self.push.forget(address)
            self.store.remove(address)
        for address, node in current.items():
            self._nodes[address] = node
            if address in pushed:  # its heartbeats carry its state: no stream (server/inventory/inventory_push.py)
                task = self._tasks.pop(address, None)
                if task is not None:
                    task.cancel()
            elif address not in self._tasks:
                self._tasks[address] = asyncio.ensure_future(self._subscribe(address))

    def note_node(self, node: FleetNode) -> None:
        """A member known before the next reconcile sees it (a registration pushing its state); loop thread."""
        if node.address not in self._nodes:
            self._nodes[node.address] = node
            self._seen = None  # the next reconcile looks at it (and drops it if it is not a member by then)

    def _mark_stale(self) -> None:
        now = time.monotonic()
        limit = self.config.stale_timeout
        own_limits = self.push.stale_timeouts() if self.push is not None else {}  # one lock, not one a node
        for rec in self.store.records():
            if rec.state != STATE_OK or not rec.has_features:
                continue
            own = own_limits.get(rec.key)
            silence = now - rec.heard_at
            if silence > (own or limit):
                what = "heartbeat from the registered node" if own else "message from the node"
                self.store.set_state(
                    rec.key, rec.name, STATE_STALE, f"no {what} for {silence:.1f} s "
                    f"(heartbeat timeout {own or limit:g} s)"
                )

    def _name(self, address: str, reported: str) -> str:
        node = self._nodes.get(address)
        if node is None:
            return reported or address
        if node.source == SOURCE_DNS and reported:
            return reported
        return node.name

    def _labels(self, address: str) -> dict[str, str]:
        node = self._nodes.get(address)
        return dict(node.labels) if node else {}

    def channel(self, address: str) -> grpc.aio.Channel:
        """A new channel to the node (credentials, tracing interceptors, options); loop thread."""
        return self._channel(address)

    def apply(self, address: str, msg: inventory_pb2.WatchFeaturesResponse, known: str) -> bool:
        """One WatchFeatures message into the store (a stream's or a push fetch's); see _handle."""
        return self._handle(address, msg, known)

    def open_watch(self, address: str, request: bytes, timeout: float | None = None) -> GrpcWatch | H2Watch:
        """A WatchFeatures call to the node on the sync's client (start() chose it): `request` the serialized
        WatchFeaturesRequest, `timeout` its deadline in seconds (None: none). read() / close() as grpc.aio's
        (server/inventory/watch_transport.py); nothing is connected before the first read() (h2) or until gRPC
        core connects (grpc). Loop thread."""
        if self._h2 is not None and self._h2_watch is not None:
            return self._h2_watch(address, request, with_deadline(self._h2, timeout),
                                  inventory_pb2.WatchFeaturesResponse.FromString)
        return GrpcWatch(self._channel(address), request, inventory_pb2.WatchFeaturesResponse.FromString, timeout)

    def _channel(self, address: str) -> grpc.aio.Channel:
        target, options = channel_target(address)
        if self.credentials is not None:
            return grpc.aio.secure_channel(target, self.credentials, options=options,
                                           interceptors=self._interceptors)
        return grpc.aio.insecure_channel(target, options=options, interceptors=self._interceptors)

    async def _subscribe(self, address: str) -> None:
        delay = BACKOFF_MIN
        assert self._connecting is not None
        while True:
            got_message = False
            error = ""
            call: GrpcWatch | H2Watch | None = None
            held = self.store.get(address)
            known = (held.announced or held.fingerprint) if held is not None and held.has_features else ""
            try:
                await self._connecting.acquire()
                slot = _Slot(self._connecting, self.config.connect_slot_seconds, self)
                try:
                    request = inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=self.config.heartbeat,
                                                                 known_fingerprint=known).SerializeToString()
                    call = self.open_watch(address, request)  # once a connecting slot is ours, not 10,000 at once
                    while True:
                        msg = await call.read()  # read() in this coroutine: no async-generator per stream
                        if msg is grpc.aio.EOF:
                            error = "the node ended the stream"
                            break
                        if not got_message:
                            slot.release()
                            self.connects += 1
                        if not self._handle(address, msg, known):
                            error = "the node's stream skipped a change; resubscribing"
                            known = ""
                            break
                        got_message = True
                        delay = BACKOFF_MIN
                        # not held while waiting for the next (a heartbeat, seconds away): parsed, a features
                        # message is 4-6x its wire size (bench_inventory.py --streams-only, 10,000 streams)
                        msg = None
                finally:
                    slot.release()
            except asyncio.CancelledError:
                if call is not None:
                    await call.close(None)
                raise
            except grpc.aio.AioRpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            except Exception as exc:  # a bug or a malformed message: keep the others going
                log.exception("subscription to %s", address)
                error = f"{type(exc).__name__}: {exc}"
            if call is not None:
                await call.close(None)
            if error:
                rec = self.store.get(address)
                self.store.set_state(address, self._name(address, rec.name if rec else ""), STATE_UNREACHABLE,
                                     error)
            if not got_message:
                delay = min(BACKOFF_MAX, delay * 2)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _handle(self, address: str, msg: inventory_pb2.WatchFeaturesResponse, known: str) -> bool:
        """Apply one message; False when it cannot be applied (resubscribe without a known fingerprint)."""
        kind = msg.WhichOneof("item")
        if kind == "features":
            ch = msg.features
            name = self._name(address, ch.node_name)
            if ch.node_name and self.on_reported_name is not None:
                self.on_reported_name(address, ch.node_name)
            probed = ch.probed_at.ToNanoseconds() / 1e9 if ch.HasField("probed_at") else time.time()
            if ch.features_omitted:
                return bool(known) and self.store.heartbeat(address, ch.round_id, ch.fingerprint, probed_at=probed)
            identity, wire_key = _wire_key(ch)
            if self.store.put_known(wire_key, address, name, identity, probed, ch.round_id,
                                    self._labels(address), announced=ch.fingerprint) is not None:
                return True
            rnd = ProbeRound(
                features=wire.features_from_proto(ch.features),
                statuses=[wire.status_from_proto(st) for st in ch.probes],
                probed_at=datetime.now(UTC),
            )
            try:
                self.store.put(address, name, rnd.features, rnd.unknown_features(), probed, ch.round_id,
                               labels=self._labels(address), fingerprint=ch.fingerprint, wire_key=wire_key)
            except StoreFull as exc:
                self.store.set_state(address, name, STATE_UNREACHABLE, str(exc))
            return True
        if kind == "heartbeat":
            hb = msg.heartbeat
            probed = hb.probed_at.ToNanoseconds() / 1e9 if hb.HasField("probed_at") else 0.0
            return self.store.heartbeat(address, hb.round_id, hb.fingerprint, probed_at=probed)
        return True


class _Slot:
    """One connecting slot of the semaphore (acquired), released at most once: at the first message, after
    `seconds` (its own timer) or at the end. Released, it holds nothing (the stream keeps it for its life).
    `sync.slots_held` counts the slots not released."""

    __slots__ = ("sem", "sync", "timer")

    def __init__(self, sem: asyncio.Semaphore, seconds: float, sync: InventorySync) -> None:
        self.sem: asyncio.Semaphore | None = sem
        self.sync = sync
        sync.slots_held += 1
        self.timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(seconds, self.release)

    def release(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sem is not None:
            self.sem.release()
            self.sem = None
            self.sync.slots_held -= 1


def _wire_key(ch: inventory_pb2.FeaturesChange) -> tuple[tuple[tuple[str, str, str], ...], str]:
    """(identity triples, sha256 of the deterministic wire form of features + probe outcomes without identity
    attributes and timings): two nodes with the same key have the same canonical set, so the second is stored
    without parsing (a 10,000-node resubscribe parses each distinct set once). The identity elements are taken
    out of the received message for the hash and put back (no copy of the features)."""
    feats = ch.features
    identity: list[tuple[str, str, str]] = []
    for name, keys in IDENTITY.items():
        if name in feats.attributes:
            elements = feats.attributes[name].elements
            for k in sorted(keys & set(elements.keys())):
                identity.append((name, k, elements[k]))
                del elements[k]
    h = hashlib.sha256(feats.SerializeToString(deterministic=True))
    for name, k, v in identity:
        feats.attributes[name].elements[k] = v
    for st in ch.probes:  # what decides unknown facts: which probe failed, why, and what it provides
        if not st.ok:
            h.update(b"\0" + st.name.encode() + b"\0" + st.error.encode() + b"\0" + "\0".join(st.features).encode())
    return tuple(identity), h.hexdigest()


__all__ = ["CHANNEL_OPTIONS", "MAX_FEATURES_MESSAGE_BYTES", "STATE_OK", "InventorySync", "SyncConfig", "channel_target"]
