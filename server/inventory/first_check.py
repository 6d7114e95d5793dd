"""The aggregator health-checks a node as soon as the node appears, instead of on the first ListNodes.

A node the aggregator has not checked yet is reported with health UNKNOWN (never a guess such as
UNAVAILABLE); this background loop finds nodes with no contact at all (new in the nodes file, a new DNS
record, a new registration) every `interval` seconds and checks them at once, so the first `fleet nodes`
after a node joins normally shows its real health. Checks go through FleetService.check_health (the same
pooled channels and timeout as ListNodes'), at most `batch` addresses per round so a fleet of thousands
appearing at once is checked in bounded slices (`batch` per `interval`: 128 nodes a second by default;
fan-out calls record contacts too, so a busy aggregator has few left to check). A node whose daemon itself
answers UNKNOWN is checked again each round (cheap, and it is what the node says).

During a registration burst (an aggregator restart: every daemon re-registers at once) the checks wait, for
at most `max_defer` seconds: each check dials the node back (a new connection, on both sides), and dialling
thousands of nodes back while they all register made the burst take twice as long (bench/bench_inventory.py
--push-only --burst-only, 10,000 nodes: 2,879-4,327 nodes dialled during the burst; 52.0 s with the checks,
19.5 s without, same machine minutes apart). A burst, over one round: new leases faster than `new_rate` a
second (32: a restart without a snapshot, where every registration is new, at any machine load), or RegisterNode
accepted (leases put or renewed: NodeInventory.lease_puts) faster than `burst_rate` a second (by default twice
the rate the leases are scaled to, --max-heartbeats-per-second, so a fleet beating at its steady rate is no
burst); and more than `min_backlog` (16) nodes unchecked, so a few new nodes are checked at once whatever else
comes. The deferral is bounded: once the checks have waited `max_defer` seconds in all since the last time every
node was checked, they run every round (as without a burst) until no node is left unchecked, and only then
may a burst defer them again. So a registered node nobody can reach is seen UNAVAILABLE at most `max_defer`
seconds (plus the backlog at `batch` per `interval`) later than without the deferral, however the
registrations come; meanwhile it is UNKNOWN (never OK), and a ListNodes call still checks the nodes of its
page itself (FleetService.check_stale).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from nodecompat.server.inventory.fleet_leases import DEFAULT_MAX_HEARTBEATS_PER_SECOND
from nodecompat.server.inventory.fleet_nodes import NodeInventory

log = logging.getLogger(__name__)

# s the first checks may wait for registration bursts, in all, between two empty backlogs: 10,000 daemons coming
# back took 20-35 s on the bench machine at loadavg 7-16, ~100 s at 20-30 (checking them all takes 80 s anyway)
MAX_DEFER = 60.0
BURST_FACTOR = 2.0  # a burst: RegisterNode accepted faster than this many times the leases' scaled rate,
NEW_RATE = 32.0  # or new leases faster than this a second (a restart without a snapshot: every one is new)
MIN_BACKLOG = 16  # unchecked nodes at most that a burst never defers (a few new nodes are checked at once)


class FirstHealthChecks:
    """start() runs the loop in a daemon thread; stop() ends it (within one check's timeout)."""

    def __init__(
        self,
        inventory: NodeInventory,
        check: Callable[[list[str], float], None],
        *,
        interval: float = 0.5,
        timeout: float = 1.0,
        batch: int = 64,
        burst_rate: float | None = None,
        new_rate: float = NEW_RATE,
        min_backlog: int = MIN_BACKLOG,
        max_defer: float = MAX_DEFER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """check(addresses, timeout s) records each address's health (FleetService.check_health). A round waits
        (module doc) while more than `min_backlog` nodes are unchecked and, since the last round, new leases came
        faster than `new_rate` a second or RegisterNode was accepted faster than `burst_rate` a second (None:
        BURST_FACTOR x the inventory's max_heartbeats_per_second, or x DEFAULT_MAX_HEARTBEATS_PER_SECOND when the
        leases are not scaled, and at least batch / interval); a rate of 0 turns its test off. max_defer: s the
        rounds may wait in all between two empty backlogs; clock: seconds."""
        self.inventory = inventory
        self.check = check
        self.interval = interval
        self.timeout = timeout
        self.batch = batch
        if burst_rate is None:  # never below the rate the checks follow (batch per interval: 128/s)
            beats = inventory.max_heartbeats_per_second
            burst_rate = max(BURST_FACTOR * (beats if beats > 0 else DEFAULT_MAX_HEARTBEATS_PER_SECOND),
                             batch / interval)
        self.burst_rate = burst_rate
        self.new_rate = new_rate
        self.min_backlog = min_backlog
        self.max_defer = max_defer
        self._clock = clock
        self._last: tuple[float, int, int] | None = None  # (clock, lease_puts, lease_changes) at the last round
        self._waited = 0.0  # s the checks waited for bursts since the backlog was last empty
        self.deferred = 0  # rounds skipped for a burst (for tests and the bench)
        self._round = 0  # rounds run (run_once calls)
        self._seen: dict[str, float] = {}  # unchecked address -> round first seen unchecked, or last checked (+ 0.5)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def unchecked(self) -> list[str]:
        """Addresses of current nodes whose health nobody has seen yet (UNKNOWN: never checked or called;
        a registration alone says nothing about the daemon's health)."""
        return self.inventory.unchecked()

    def run_once(self) -> int:
        """Check up to `batch` unchecked nodes, unless a registration burst defers them (module doc); returns how
        many were checked."""
        since = self._burst()
        unchecked = self.unchecked()
        self._round += 1
        # the oldest first: first seen unchecked (or last checked, a node answering UNKNOWN) longest ago, ties in
        # nodes()' order; not nodes()' order alone, where new nodes named before it (a registration storm) or
        # `batch` nodes answering UNKNOWN for ever would keep a node from its first check for good
        seen = self._seen
        self._seen = order = {a: seen.get(a, self._round) for a in unchecked}  # only the unchecked are kept
        if not unchecked:
            self._waited = 0.0  # every node checked: a later burst may defer the checks again
            return 0
        if since > 0 and len(unchecked) > self.min_backlog and self._waited < self.max_defer:
            self._waited += since
            self.deferred += 1
            return 0
        todo = sorted(unchecked, key=order.__getitem__)[: self.batch]
        self.check(todo, self.timeout)
        for a in todo:  # checked now: after the nodes first seen this round, if it is still unchecked
            order[a] = self._round + 0.5
        return len(todo)

    def _burst(self) -> float:
        """Seconds since the last round when registrations came as a burst since then (new leases faster than
        new_rate, or RegisterNode accepted faster than burst_rate, a second), else 0."""
        inv = self.inventory
        now, puts, changes = self._clock(), inv.lease_puts, inv.lease_changes
        last, self._last = self._last, (now, puts, changes)
        if last is None or now <= last[0]:
            return 0.0
        since = now - last[0]
        if 0 < self.new_rate < (changes - last[2]) / since or 0 < self.burst_rate < (puts - last[1]) / since:
            return since
        return 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fleet-first-checks", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep checking whatever one round does
                log.exception("first health checks failed")
            self._stop.wait(self.interval)  # also between slices: a big fleet appearing is checked gently

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
