"""NodeService.WatchFeatures: the node's features pushed to watchers (the aggregator's inventory).

The hub hangs off the feature cache's round callback: each probe round gets the next round id and a
fingerprint (nodecompat.fleet.fingerprint); a round whose fingerprint differs from the last builds one
FeaturesChange message, shared by every watcher. A watcher gets the current round first, then one
message per change, and a heartbeat (latest round id, probe time and fingerprint) when nothing changed
for its heartbeat interval. The messages carry the node's profile: volatile elements (usage values such as
memory.size available_bytes, nodecompat/fleet/volatile.py) are left out, as the fingerprint leaves them
out (a change message is kept and sent for many rounds: its usage values would be stale); GetFeatures
has them fresh. Idle cost per watcher: one coroutine sleeping on an asyncio.Event — no
thread, no timer besides its own wait, no copy of the features.

Bounds (hostile callers are normal callers): at most `max_watchers` streams (more: RESOURCE_EXHAUSTED
naming the limit); a watcher only ever holds a reference to the latest shared message, so a slow
consumer costs its gRPC flow-control window and nothing more; one that leaves a message untaken for
`slow_consumer_seconds` is dropped with RESOURCE_EXHAUSTED saying so (each write is timed).
Hand-written because it is glue between our cache and grpc.aio; no library fits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodecompat import wire
from nodecompat.fleet.fingerprint import fingerprint, split_identity
from nodecompat.fleet.volatile import strip_volatile
from nodecompat.probes.runner import ProbeRound
from nodecompat.v1 import inventory_pb2

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 10.0  # s
MIN_HEARTBEAT, MAX_HEARTBEAT = 1.0, 300.0
MAX_WATCHERS = 16  # below the runtime's 64 admitted calls: watchers never crowd out ValidateImage
SLOW_CONSUMER_SECONDS = 30.0


def clamp_heartbeat(asked: float, default: float = DEFAULT_HEARTBEAT) -> float:
    """The heartbeat interval a watcher gets: `asked` (0: default) clamped to [1, 300] s."""
    if not asked or asked != asked:  # 0 or NaN
        return default
    return min(MAX_HEARTBEAT, max(MIN_HEARTBEAT, asked))


# what a registration heartbeat carries: (round id, probe time, fingerprint, identity triples)
PushState = tuple[int, Timestamp, str, tuple[tuple[str, str, str], ...]]


@dataclass(frozen=True)
class _State:
    round_id: int
    fingerprint: str
    probed_at: Timestamp
    change: inventory_pb2.WatchFeaturesResponse  # the FeaturesChange of the round that set this fingerprint
    change_round: int
    identity: tuple[tuple[str, str, str], ...] = ()  # the round's identity triples (split_identity)


class _Watcher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class FeatureWatchHub:
    def __init__(
        self,
        node_name: str,
        default_heartbeat: float = DEFAULT_HEARTBEAT,
        max_watchers: int = MAX_WATCHERS,
        slow_consumer_seconds: float = SLOW_CONSUMER_SECONDS,
    ) -> None:
        self.node_name = node_name
        self.default_heartbeat = default_heartbeat
        self.max_watchers = max_watchers
        self.slow_consumer_seconds = slow_consumer_seconds
        self._lock = threading.Lock()
        self._state: _State | None = None
        self._round_id = 0
        self._watchers: set[_Watcher] = set()
        self.dropped_slow = 0
        # Called (on the probe thread, after the state is recorded) when a round's fingerprint differs from
        # the last one's: the registration's heartbeat goes out at once (server/node/registration.py, push model).
        self.on_change: list[Callable[[], None]] = []

    # -- fed by the feature cache (probe thread) ----------------------------------------------------
    def on_round(self, rnd: ProbeRound) -> None:
        """Record a finished probe round; build a FeaturesChange only when the fingerprint changed."""
        profile = strip_volatile(rnd.features)  # no usage values: a watcher holds this message for many rounds
        fp = fingerprint(profile, rnd.unknown_features())
        _, identity = split_identity(profile)
        ts = Timestamp()
        ts.FromDatetime(rnd.probed_at)
        with self._lock:
            self._round_id += 1
            rid = self._round_id
            prev = self._state
        if prev is not None and prev.fingerprint == fp:
            state = _State(rid, fp, ts, prev.change, prev.change_round, identity)
        else:
            change = inventory_pb2.WatchFeaturesResponse(
                features=inventory_pb2.FeaturesChange(
                    node_name=self.node_name,
                    round_id=rid,
                    probed_at=ts,
                    fingerprint=fp,
                    features=wire.features_to_proto(profile),
                    probes=[wire.status_to_proto(s) for s in rnd.statuses],
                )
            )
            state = _State(rid, fp, ts, change, rid, identity)
        with self._lock:
            self._state = state
            watchers = list(self._watchers)
        for w in watchers:
            w.wake()
        if prev is None or prev.fingerprint != fp:
            for cb in list(self.on_change):
                try:
                    cb()
                except Exception:  # a listener's bug must not stop the watchers' feed
                    log.exception("feature watch change listener")

    def push_state(self) -> PushState | None:
        """(round id, probe time, fingerprint, identity triples) of the latest round, None before the first:
        what a registration heartbeat carries (RegisterNodeRequest round_id/probed_at/fingerprint/identity;
        identity as split_identity gives it, e.g. (("system.name", "nodename", "node-1"),))."""
        with self._lock:
            state = self._state
        return None if state is None else (state.round_id, state.probed_at, state.fingerprint, state.identity)

    def watchers(self) -> int:
        with self._lock:
            return len(self._watchers)

    # -- one stream ----------------------------------------------------------------------------------
    async def watch(
        self, request: inventory_pb2.WatchFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inventory_pb2.WatchFeaturesResponse]:
        """The WatchFeatures stream for a grpc.aio server: an async generator (as servers expect of a
        streaming handler) that writes through context.write, so each write can be timed."""
        if False:  # pragma: no cover - makes this an async generator; messages go through context.write
            yield inventory_pb2.WatchFeaturesResponse()
        heartbeat = clamp_heartbeat(request.heartbeat_seconds, self.default_heartbeat)
        w = _Watcher(asyncio.get_running_loop())
        with self._lock:
            if len(self._watchers) >= self.max_watchers:
                full = True
            else:
                full = False
                self._watchers.add(w)
        if full:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"WatchFeatures: {self.max_watchers} watchers already, the limit of this daemon; "
                "retry with backoff",
            )
        try:
            # the first message: the current features (waiting for the first round if there is none yet)
            state = self._current()
            while state is None:
                await self._wait(w, heartbeat)
                state = self._current()
            if request.known_fingerprint and request.known_fingerprint == state.fingerprint:
                first = inventory_pb2.WatchFeaturesResponse()
                first.features.CopyFrom(state.change.features)
                first.features.ClearField("features")
                first.features.features_omitted = True
                first.features.round_id = state.round_id
                first.features.probed_at.CopyFrom(state.probed_at)
            else:
                first = state.change
            sent_fp, sent_round = state.fingerprint, state.round_id
            await self._write(context, first)
            if request.once:  # a one-shot fetch (the push model's): the stream ends here
                return
            while True:
                woke = await self._wait(w, heartbeat)
                state = self._current()
                assert state is not None
                if state.fingerprint != sent_fp:
                    msg = state.change
                elif not woke or state.round_id != sent_round:
                    msg = inventory_pb2.WatchFeaturesResponse(
                        heartbeat=inventory_pb2.FeaturesHeartbeat(
                            round_id=state.round_id, probed_at=state.probed_at,
                            fingerprint=state.fingerprint, heartbeat_seconds=heartbeat,
                        )
                    )  # nothing changed for a whole interval, or a new round with the same features
                else:
                    continue
                sent_fp, sent_round = state.fingerprint, state.round_id
                await self._write(context, msg)
        finally:
            with self._lock:
                self._watchers.discard(w)

    async def _write(self, context: grpc.aio.ServicerContext, msg: inventory_pb2.WatchFeaturesResponse) -> None:
        """Send one message; a watcher that has not taken it within slow_consumer_seconds is dropped."""
        try:
            async with asyncio.timeout(self.slow_consumer_seconds):  # not wait_for: see _wait
                await context.write(msg)
        except TimeoutError:
            self.dropped_slow += 1
            log.warning("WatchFeatures: dropping %s: a message untaken for %g s", context.peer(),
                        self.slow_consumer_seconds)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"WatchFeatures: the watcher did not take a message for {self.slow_consumer_seconds:g} s "
                "(slow consumer); resubscribe",
            )

    def _current(self) -> _State | None:
        with self._lock:
            return self._state

    @staticmethod
    async def _wait(w: _Watcher, timeout: float) -> bool:
        """Wait for a round or the heartbeat interval; True when a round woke us. CancelledError when the
        call's task is cancelled (grpc.aio does so when the client resets the stream or the connection goes),
        even when a round woke us in the same loop iteration: asyncio.timeout, not asyncio.wait_for, whose
        Python 3.11 version returns the inner result and drops the cancellation when both land together
        (CPython gh-86296, fixed in 3.12). A handler that lost its cancellation held its watcher slot until
        its next write failed (up to the heartbeat, 300 s at most): MAX_WATCHERS such resets pinned the hub."""
        try:
            async with asyncio.timeout(timeout):
                await w.event.wait()
        except TimeoutError:
            return False
        w.event.clear()
        return True
