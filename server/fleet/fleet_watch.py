"""FleetService.WatchFleet: an image's fit set over the live inventory, then one event per transition.

A watcher resolves and parses the spec once, sends the initial state of every selected node
(initial=true), a FleetSynced, and then an event whenever a node's state changes: COMPATIBLE,
INCOMPATIBLE (with the reasons), UNREACHABLE, STALE (stream silent past the heartbeat timeout) or
LEFT (gone from the fleet or the selector); a node joining gets its state as a transition too.
Changes arrive from the FeatureStore's listeners (the inventory-aio thread) as a set of dirty node
keys — bounded by the fleet's size whatever the rate of change — and membership is re-read every
second. The spec is evaluated once per distinct feature set (cached in the store), so an idle watcher
costs one sleeping coroutine and a dictionary of node states.

Bounds: at most `max_watchers` streams (RESOURCE_EXHAUSTED past it); every write must be taken
within `slow_consumer_seconds` or the watcher is dropped with RESOURCE_EXHAUSTED saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from nodecompat.engine.spec import Spec
from nodecompat.fleet.reasons import failure_reasons
from nodecompat.fleet.store import STATE_OK, STATE_STALE, FeatureStore, NodeRecord, spec_key
from nodecompat.fleet.volatile import volatile_problem
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.server.inventory.inventory_answers import timestamp
from nodecompat.v1 import fleet_pb2, inventory_pb2

log = logging.getLogger(__name__)

MAX_FLEET_WATCHERS = 32  # half the runtime's admitted calls: ValidateFleet keeps room
SLOW_CONSUMER_SECONDS = 30.0
MEMBERSHIP_INTERVAL = 1.0
State = inventory_pb2.FleetEvent.State


@dataclass
class WatchSpec:
    spec: Spec
    text: str
    tags: list[str]
    nfd_compat: bool
    selector: dict[str, str]
    image_digest: str = ""
    artifact_digest: str = ""


@dataclass
class _NodeState:
    state: int
    reasons: list[str] = field(default_factory=list)


class FleetWatchHub:
    def __init__(
        self,
        store: FeatureStore,
        members: Callable[[dict[str, str]], Sequence[FleetNode]],
        max_watchers: int = MAX_FLEET_WATCHERS,
        slow_consumer_seconds: float = SLOW_CONSUMER_SECONDS,
    ) -> None:
        self.store = store
        self.members = members
        self.max_watchers = max_watchers
        self.slow_consumer_seconds = slow_consumer_seconds
        self._lock = threading.Lock()
        self._watchers = 0
        self.dropped_slow = 0
        # Resolving a watch's spec (a registry read up to the default timeout) runs here, not on the loop's
        # default executor (min(32, cpus + 4) threads), which every watcher's membership/event work shares:
        # 40 watches naming an image on a trickling registry left a legitimate watcher without its events.
        self.resolver = ThreadPoolExecutor(max_watchers, thread_name_prefix="fleet-watch-resolve")

    def event(self, ws: WatchSpec, node: FleetNode, rec: NodeRecord | None) -> inventory_pb2.FleetEvent:
        """The node's current state as an event (initial=False)."""
        ev = inventory_pb2.FleetEvent(node_name=node.name, address=node.address, labels=dict(node.labels))
        if rec is not None and rec.name and node.source == SOURCE_DNS:
            ev.node_name = rec.name
        if rec is None or not rec.has_features:
            ev.state = State.UNREACHABLE
            ev.reasons.append(rec.error if rec is not None and rec.error else "no features from the node yet")
            return ev
        ev.as_of.CopyFrom(timestamp(rec.probed_at))
        ev.fingerprint = rec.fingerprint
        if rec.state != STATE_OK:
            ev.state = State.STALE if rec.state == STATE_STALE else State.UNREACHABLE
            if rec.error:
                ev.reasons.append(rec.error)
            return ev
        verdicts = self.store.evaluate(ws.spec, spec_key(ws.text, ws.nfd_compat), [rec], ws.tags, ws.nfd_compat)
        v = verdicts.get(rec.key)
        if v is None:
            ev.state = State.UNREACHABLE
            ev.reasons.append("the node's features left the inventory")
            return ev
        ev.state = State.COMPATIBLE if v.compatible else State.INCOMPATIBLE
        ev.score = v.score
        if not v.compatible:
            ev.reasons.extend(failure_reasons(v))
        return ev

    def events(self, ws: WatchSpec, nodes: Sequence[FleetNode]) -> list[inventory_pb2.FleetEvent]:
        """Current events of `nodes` (one thread hop for a batch)."""
        return [self.event(ws, n, self.store.get(n.address)) for n in nodes]

    async def admit(self, context: grpc.aio.ServicerContext) -> None:
        """Take a watcher slot before anything else (the spec's resolution included); RESOURCE_EXHAUSTED when
        all are taken. The caller must release() it."""
        with self._lock:
            full = self._watchers >= self.max_watchers
            if not full:
                self._watchers += 1
        if full:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"WatchFleet: {self.max_watchers} watchers already, the limit of this aggregator; retry with backoff",
            )

    def release(self) -> None:
        with self._lock:
            self._watchers -= 1

    async def watch(self, ws: WatchSpec, context: grpc.aio.ServicerContext) -> None:
        """Run one admitted WatchFleet stream, writing through context.write (returns when the caller leaves)."""
        loop = asyncio.get_running_loop()
        dirty: set[str] = set()
        wake = asyncio.Event()

        def on_change(old: NodeRecord | None, new: NodeRecord | None) -> None:
            key = (new or old).key  # type: ignore[union-attr]

            def mark() -> None:
                dirty.add(key)
                wake.set()

            loop.call_soon_threadsafe(mark)

        self.store.listeners.append(on_change)
        try:
            members = {n.address: n for n in await asyncio.to_thread(self.members, ws.selector)}
            states: dict[str, _NodeState] = {}
            counts = {State.COMPATIBLE: 0, State.INCOMPATIBLE: 0}
            for ev in await asyncio.to_thread(self.events, ws, list(members.values())):
                address = ev.address
                ev.initial = True
                states[address] = _NodeState(ev.state, list(ev.reasons))
                counts[ev.state] = counts.get(ev.state, 0) + 1
                await self._write(context, inventory_pb2.WatchFleetResponse(event=ev))
            await self._write(
                context,
                inventory_pb2.WatchFleetResponse(
                    synced=inventory_pb2.FleetSynced(
                        compatible=counts[State.COMPATIBLE],
                        incompatible=counts[State.INCOMPATIBLE],
                        unavailable=len(members) - counts[State.COMPATIBLE] - counts[State.INCOMPATIBLE],
                        image_digest=ws.image_digest,
                        artifact_digest=ws.artifact_digest,
                    )
                ),
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for, which on Python 3.11 drops a watcher's cancellation landing
                    # with a wake-up (CPython gh-86296; server/node/feature_watch.py)
                    async with asyncio.timeout(MEMBERSHIP_INTERVAL):
                        await wake.wait()
                wake.clear()
                now_members = {n.address: n for n in await asyncio.to_thread(self.members, ws.selector)}
                keys = set(dirty)
                dirty.clear()
                for gone in [a for a in members if a not in now_members]:
                    node = members.pop(gone)
                    states.pop(gone, None)
                    ev = inventory_pb2.FleetEvent(node_name=node.name, address=gone, state=State.LEFT,
                                                  labels=dict(node.labels))
                    await self._write(context, inventory_pb2.WatchFleetResponse(event=ev))
                for address, node in now_members.items():
                    if address not in members:
                        members[address] = node
                        keys.add(address)
                changed = [members[a] for a in sorted(keys) if a in members]
                for ev in await asyncio.to_thread(self.events, ws, changed) if changed else []:
                    address = ev.address
                    prev = states.get(address)
                    if prev is not None and prev.state == ev.state and (
                        ev.state != State.INCOMPATIBLE or prev.reasons == list(ev.reasons)
                    ):
                        continue
                    states[address] = _NodeState(ev.state, list(ev.reasons))
                    await self._write(context, inventory_pb2.WatchFleetResponse(event=ev))
        finally:
            self.store.listeners.remove(on_change)

    async def _write(self, context: grpc.aio.ServicerContext, msg: inventory_pb2.WatchFleetResponse) -> None:
        try:
            async with asyncio.timeout(self.slow_consumer_seconds):  # not wait_for: see the membership wait
                await context.write(msg)
        except TimeoutError:
            self.dropped_slow += 1
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"WatchFleet: the watcher did not take an event for {self.slow_consumer_seconds:g} s "
                "(slow consumer); resubscribe",
            )


class Aborted(Exception):
    """Raised by RaisingContext.abort: carries the status for an async handler to send."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class RaisingContext:
    """A stand-in context for the sync request checks (they call context.abort, which must raise)."""

    def __init__(self, time_remaining: float | None = None) -> None:
        self._left = time_remaining

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def abort_with_status(self, status: Any) -> None:
        raise Aborted(status.code, status.details)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def time_remaining(self) -> float | None:
        return self._left


def watch_spec(
    request: inventory_pb2.WatchFleetRequest,
    check_request: Callable[[Any, Any], None],
    resolve: Callable[[Any, Any, float], tuple[str, str, str]],
    check_spec: Callable[[str, Any, str, bool], Spec],
    default_timeout: float,
) -> WatchSpec:
    """The spec of a WatchFleet request, checked as ValidateFleet checks its own (Aborted on a problem;
    FAILED_PRECONDITION for a spec reading a volatile usage value: nodecompat/fleet/volatile.py)."""
    ctx: Any = RaisingContext(None)
    as_validate = fleet_pb2.ValidateFleetRequest(
        tags=request.tags, platform=request.platform, plain_http=request.plain_http, nfd_compat=request.nfd_compat,
    )
    source = request.WhichOneof("source")
    if source == "image":
        as_validate.image = request.image
    elif source == "spec":
        as_validate.spec = request.spec
    else:
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "set either `image` (a reference) or `spec` (YAML/JSON)")
    check_request(as_validate, ctx)
    text, image_digest, artifact_digest = resolve(as_validate, ctx, time.monotonic() + default_timeout)
    spec = check_spec(text, ctx, request.image or "inline spec", request.nfd_compat)
    if problem := volatile_problem(spec):  # transitions come from stored sets, which hold no usage values
        ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, f"WatchFleet: {problem}")
    return WatchSpec(spec, text, list(request.tags), request.nfd_compat, dict(request.selector),
                     image_digest, artifact_digest)
