"""The push model of the inventory: registered daemons announce their feature state in their RegisterNode
heartbeats, and the aggregator holds no stream and no channel to them (docs/inventory.md).

A held WatchFeatures stream costs one HTTP/2 connection per node (~30 KiB in gRPC core alone, client
side, whatever the channel arguments), so an aggregator watching 10,000 nodes through streams cannot stay
within 10 KiB a node. A daemon started with `serve --register` sends, with every lease heartbeat and at once
when its fingerprint changes (server/node/registration.py), its latest probe round's id, probe time and
fingerprint (RegisterNodeRequest round_id/probed_at/fingerprint). For such a node:
- a heartbeat whose fingerprint equals the one the store holds refreshes the record (its time, its round,
  its probe time: as_of is the heartbeat's probe time) and nothing else happens;
- a new node, or a fingerprint the store does not hold for it, whose registration carries its identity
  attributes (RegisterNodeRequest.identity: system.name nodename, what the fingerprint leaves out) and whose
  fingerprint the store already holds for another node, is held at once from that set plus its identity:
  no fetch (FeatureStore.put_fingerprint; WatchFleet sees the transition as after a fetch). The node's
  fingerprint is then trusted as its fetched features would be (the registrant is authenticated; a node
  answering a fetch could send any features too), and its address is not dialled (ListNodes health-checks
  it as any node without a recent contact);
- otherwise a new node, or a fingerprint the store does not hold for it, makes the aggregator fetch the
  features once:
  one WatchFeatures call (known_fingerprint: the one held, `once`: the daemon ends the stream after its first
  message) on the streams' client (SyncConfig.watch_transport: h2, no gRPC core channel, or grpc), then its
  connection is closed. The message goes through the same path as a stream's (InventorySync
  _handle: the store recomputes the fingerprint, sets are shared per fingerprint). When what was stored does
  not equal what the node announces last (it changed meanwhile, or it lies), another fetch follows after a
  backoff;
- staleness is heartbeat silence: a record not refreshed for two lease beats + 1 s (2 x ttl/3 + 1 s of the
  granted lease, which grows with the fleet: fleet_leases.grant_ttl; a stream's: 3 heartbeats + 1 s) is
  STALE; lease expiry means the node left, as before.
  A node whose fetch fails is UNREACHABLE with the error (its last features kept, never refreshed by a
  heartbeat announcing another fingerprint), as a node whose stream fails.

Bounds (a registration's fingerprint is untrusted input): the fingerprint must be "sha256:" + 64 lowercase
hex digits and the probe time a valid Timestamp after 1970 (else RegisterNode is INVALID_ARGUMENT:
push_problem; identity only IDENTITY's features and elements, values of 1-253 characters: at most one
triple per IDENTITY element; a probe time later than now is stored as now, so a wrong clock or a lie makes nothing look
fresh: nodecompat/fleet/store.py); at most `max_fetching` fetches run at once over all nodes, each within
`fetch_timeout` seconds (a deadline the node cannot stretch); per node at most one fetch is in flight or
waiting, and fetches start at least `min_fetch_interval` seconds apart (a backoff doubling to BACKOFF_MAX
after failed or mismatched fetches), so a registrant flipping its fingerprint on every heartbeat costs at
most one small call a second, however often it calls RegisterNode. The table holds one small entry per live
registration (bounded by --max-registrations); entries go with the node's lease.

Nodes from the nodes file or DNS, and registrations without a fingerprint (older daemons), keep their
WatchFeatures streams (server/inventory/inventory_sync.py), as do all nodes of replicas sharing etcd
(server/inventory/inventory_shards.py: AggregatorDaemon makes no PushedNodes there). Hand-written: glue between the
lease table, the feature store and grpc.aio; no library fits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from nodecompat.fleet.fingerprint import IDENTITY
from nodecompat.fleet.store import STATE_UNREACHABLE
from nodecompat.server.inventory.fleet_members import MAX_FIELD, SOURCE_REGISTERED, FleetNode
from nodecompat.v1 import fleet_pb2, inventory_pb2

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nodecompat.server.inventory.inventory_sync import InventorySync

log = logging.getLogger(__name__)

FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
MAX_FETCHING = 32  # fetches in flight at once, all nodes together
FETCH_TIMEOUT = 10.0  # s: one fetch, connection set-up included
MIN_FETCH_INTERVAL = 1.0  # s between the starts of two fetches of one node
BACKOFF_MAX = 30.0  # s: the longest wait before re-fetching a node whose fetch failed or mismatched
NOTE_DELAY = 0.05  # s: adopted nodes are noted on the sync's loop in batches, at most one wake-up per this
MAX_TIMESTAMP_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the last second a Timestamp may hold


def push_problem(request: fleet_pb2.RegisterNodeRequest) -> str:
    """Why the request's feature state cannot be used ("" when it can or when there is none)."""
    fp = request.fingerprint
    if not fp:
        if request.round_id or request.HasField("probed_at") or request.identity:
            return "round_id/probed_at/identity given without a fingerprint"
        return ""
    for feature, attr in request.identity.items():
        keys = IDENTITY.get(feature)
        if keys is None:
            return (f"identity feature {feature[:80]!r} is not an identity attribute (only "
                    f"{', '.join(sorted(IDENTITY))})")
        for element, value in attr.elements.items():
            if element not in keys:
                return (f"identity element {feature}/{element[:80]!r} is not an identity attribute (only "
                        f"{', '.join(sorted(keys))})")
            if not 0 < len(value) <= MAX_FIELD:
                return f"identity {feature}/{element} must be 1-{MAX_FIELD} characters, got {len(value)}"
    if len(fp) != 71 or not FINGERPRINT_RE.match(fp):
        return "fingerprint must be 'sha256:' followed by 64 lowercase hex digits"
    if request.HasField("probed_at"):
        ts = request.probed_at
        # a Timestamp's own range (google/protobuf/timestamp.proto); a later time than now is stored as now
        # (nodecompat/fleet/store.py): the node's clock decides no freshness
        if not (0 <= ts.seconds <= MAX_TIMESTAMP_SECONDS and 0 <= ts.nanos < 1_000_000_000):
            return "probed_at must be a valid time after 1970"
    return ""


@dataclass(slots=True)
class _Pushed:
    name: str
    fingerprint: str  # the last one announced
    round_id: int
    probed_at: float  # epoch seconds
    stale_after: float  # s of heartbeat silence before STALE
    busy: bool = False  # a fetch is in flight or scheduled
    last_fetch: float = -math.inf  # time.monotonic() of the last fetch's start
    failures: int = 0


class PushedNodes:
    """The registered nodes that push their state. announce() from any thread; the fetches run on the
    InventorySync's event loop (its client of WatchFeatures, credentials and tracing: InventorySync.open_watch)."""

    def __init__(self, sync: InventorySync, *, max_fetching: int = MAX_FETCHING, fetch_timeout: float = FETCH_TIMEOUT,
                 min_fetch_interval: float = MIN_FETCH_INTERVAL) -> None:
        self.sync = sync
        self.store = sync.store
        self.max_fetching = max_fetching
        self.fetch_timeout = fetch_timeout
        self.min_fetch_interval = min_fetch_interval
        self._lock = threading.Lock()
        self._nodes: dict[str, _Pushed] = {}
        self._sem: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._noting: list[FleetNode] = []  # adopted nodes the sync's loop has yet to note (under _lock)
        self._note_due = False  # a _note_adopted is scheduled (under _lock)
        self.fetches = 0  # fetches started (counts retries)
        self.adopted = 0  # nodes held from a set the store held under their fingerprint, without a fetch
        self.open_channels = 0  # connections open now (fetches in flight, on either client)

    # -- any thread ----------------------------------------------------------------------------------
    def announce(self, address: str, name: str, labels: Mapping[str, str], ttl: float,
                 request: fleet_pb2.RegisterNodeRequest) -> None:
        """A RegisterNode accepted for `address` (granted lease `ttl` s) with the state in `request` (checked
        by push_problem first). Without a fingerprint the node goes back to a stream (an older daemon)."""
        fp = request.fingerprint
        if not fp:
            with self._lock:
                self._nodes.pop(address, None)
            return
        # as the fetch and the streams convert it (inventory_sync._handle): one probe time, one float, whichever path
        probed = request.probed_at.ToNanoseconds() / 1e9 if request.HasField("probed_at") else 0.0
        stale_after = 2 * ttl / 3 + 1.0
        with self._lock:
            entry = self._nodes.get(address)
            if entry is None:
                entry = self._nodes[address] = _Pushed(name, fp, request.round_id, probed, stale_after)
            else:
                entry.name, entry.fingerprint, entry.round_id = name, fp, request.round_id
                entry.probed_at, entry.stale_after = probed, stale_after
        if self.store.heartbeat(address, request.round_id, fp, probed_at=probed):
            return  # what the store holds is current: its time and round refreshed
        node = FleetNode(name, address, dict(labels), SOURCE_REGISTERED)
        if self._adopt(node, request, probed):
            return
        with self._lock:
            if entry.busy or self._nodes.get(address) is not entry:
                return  # the fetch in flight or waiting compares with this announcement when it ends
            entry.busy = True
        self.sync.loop.call_soon_threadsafe(self._schedule, node)

    def _adopt(self, node: FleetNode, request: fleet_pb2.RegisterNodeRequest, probed: float) -> bool:
        """Hold the node from the set stored under its announced fingerprint plus the identity it sent (module
        doc); False when it sent no identity or no such set is held (then it is fetched)."""
        identity = tuple(sorted((feature, element, value) for feature, attr in request.identity.items()
                                for element, value in attr.elements.items()))
        if not identity:
            return False
        rec = self.store.put_fingerprint(request.fingerprint, node.address, node.name, identity, probed,
                                         request.round_id, node.labels)
        if rec is None:
            return False
        with self._lock:  # noted on the sync's loop as _schedule does before a fetch; one wake-up for a burst
            self.adopted += 1  # under the lock: announce runs on the event loop and in workers
            self._noting.append(node)
            first = not self._note_due
            self._note_due = True
        if first:
            self.sync.loop.call_soon_threadsafe(self._note_later)
        return True

    def _note_later(self) -> None:
        """The sync's loop: note the adopted nodes NOTE_DELAY s from now. Waking the sync's thread for each
        adoption (call_soon_threadsafe: a write to its loop's socket, then the GIL handed over) took ~40% of a
        RegisterNode answered on the loop in a 5,000-node burst (py-spy); nothing waits for the note (a reconcile
        in between finds the node among the members and the pushed addresses anyway)."""
        self.sync.loop.call_later(NOTE_DELAY, self._note_adopted)

    def _note_adopted(self) -> None:
        """The sync's loop: note the nodes adopted since the last call (sync.note_node)."""
        with self._lock:
            nodes, self._noting = self._noting, []
            self._note_due = False
        for node in nodes:
            self.sync.note_node(node)

    def restore(self, address: str, name: str, fingerprint: str, round_id: int, probed_at: float,
                ttl: float) -> None:
        """A node read back from a snapshot whose record the store holds again (inventory_snapshot.py): its
        next heartbeat announcing the same fingerprint is a plain renewal (no fetch); no stream is opened."""
        with self._lock:
            self._nodes[address] = _Pushed(name, fingerprint, round_id, probed_at, 2 * ttl / 3 + 1.0)

    def is_pushed(self, address: str) -> bool:
        with self._lock:
            return address in self._nodes

    def addresses(self) -> set[str]:
        with self._lock:
            return set(self._nodes)

    def stale_after(self, address: str) -> float | None:
        """Seconds of heartbeat silence after which the node is STALE; None when it is not pushed."""
        with self._lock:
            entry = self._nodes.get(address)
            return None if entry is None else entry.stale_after

    def stale_timeouts(self) -> dict[str, float]:
        """address -> stale_after() of every pushed node (a copy, taken under the lock once)."""
        with self._lock:
            return {a: e.stale_after for a, e in self._nodes.items()}

    def forget(self, address: str) -> None:
        """The node left the fleet (its lease ended): no more fetches for it."""
        with self._lock:
            self._nodes.pop(address, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._nodes)

    # -- the sync's loop -----------------------------------------------------------------------------
    def _schedule(self, node: FleetNode) -> None:
        """Start the node's fetch now or once min_fetch_interval (or its backoff) since the last has passed."""
        self.sync.note_node(node)
        with self._lock:
            entry = self._nodes.get(node.address)
            if entry is None:
                return
            wait = self.min_fetch_interval * (2 ** min(entry.failures, 10))
            delay = min(BACKOFF_MAX, wait) - (time.monotonic() - entry.last_fetch)
        if delay > 0:
            if entry.failures:
                delay *= 0.5 + random.random() / 2
            self.sync.loop.call_later(delay, self._start, node.address)
        else:
            self._start(node.address)

    def _start(self, address: str) -> None:
        task = asyncio.ensure_future(self._fetch(address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tasks(self) -> list[asyncio.Task[None]]:
        """The fetches running (for the sync's shutdown); loop thread."""
        return list(self._tasks)

    async def _fetch(self, address: str) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_fetching)
        async with self._sem:
            with self._lock:
                entry = self._nodes.get(address)
                if entry is None:
                    return
                entry.last_fetch = time.monotonic()
            self.fetches += 1
            error = await self._fetch_once(address)
        with self._lock:
            entry = self._nodes.get(address)
            if entry is None:
                return
            rec = self.store.get(address)
            current = rec is not None and rec.has_features and entry.fingerprint in (rec.fingerprint, rec.announced)
            if current and not error:
                entry.failures, entry.busy = 0, False
                return
            entry.failures += 1
            name = entry.name
            log.debug("feature fetch from %s: %s; again after a backoff (failure %d)", address,
                      error or f"holds {rec.fingerprint if rec else 'nothing'}, announced {entry.fingerprint}",
                      entry.failures)
        if error:
            self.store.set_state(address, name, STATE_UNREACHABLE, error)
        self._schedule(FleetNode(name, address, {}, SOURCE_REGISTERED))  # busy stays set: one at a time

    async def _fetch_once(self, address: str) -> str:
        """One WatchFeatures call, its first message applied; "" or what went wrong."""
        held = self.store.get(address)
        known = (held.announced or held.fingerprint) if held is not None and held.has_features else ""
        # on the streams' client (InventorySync.open_watch: h2 or a gRPC core channel), within fetch_timeout
        call = self.sync.open_watch(address, inventory_pb2.WatchFeaturesRequest(
            known_fingerprint=known, once=True, heartbeat_seconds=1.0).SerializeToString(), self.fetch_timeout)
        self.open_channels += 1
        try:
            msg = await call.read()
            if msg is not grpc.aio.EOF:
                # the end of the stream (once): the call and its tracing span end here; a daemon ignoring `once`
                # sends a heartbeat within 1 s instead, and close() below cancels the call
                await call.read()
            if msg is grpc.aio.EOF:
                return "the node ended the feature fetch without an answer"
            if msg.WhichOneof("item") != "features":
                return "the node's first WatchFeatures message carried no features"
            if not self.is_pushed(address):
                # it left the fleet while the fetch ran (its lease lapsed: the reconcile, on this loop, forgot
                # it and removed its record): storing the answer would bring back a record nobody removes
                return ""
            if not self.sync.apply(address, msg, known):
                return "the node answered the feature fetch with a fingerprint it did not hold"
            return ""
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # a malformed message or a bug: reported on the node, the others go on
            log.exception("feature fetch from %s", address)
            return f"{type(exc).__name__}: {exc}"
        finally:
            await call.close(None)
            self.open_channels -= 1


__all__ = ["PushedNodes", "push_problem"]
