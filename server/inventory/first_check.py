"""The aggregator health-checks a node as soon as the node appears, instead of on the first ListNodes.

A node the aggregator has not checked yet is reported with health UNKNOWN (never a guess such as
UNAVAILABLE); this background loop finds nodes with no contact at all (new in the nodes file, a new DNS
record, a new registration) every `interval` seconds and checks them at once, so the first `fleet nodes`
after a node joins normally shows its real health. Checks go through FleetService.check_health (the same
pooled channels and timeout as ListNodes'), at most `batch` addresses per round so a fleet of thousands
appearing at once is checked in bounded slices (`batch` per `interval`: 128 nodes a second by default;
fan-out calls record contacts too, so a busy aggregator has few left to check). A node whose daemon itself
answers UNKNOWN is checked again each round (cheap, and it is what the node says).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from nodecompat.server.inventory.fleet_nodes import NodeInventory

log = logging.getLogger(__name__)


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
    ) -> None:
        self.inventory = inventory
        self.check = check
        self.interval = interval
        self.timeout = timeout
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def unchecked(self) -> list[str]:
        """Addresses of current nodes whose health nobody has seen yet (UNKNOWN: never checked or called;
        a registration alone says nothing about the daemon's health)."""
        return self.inventory.unchecked()

    def run_once(self) -> int:
        """Check up to `batch` unchecked nodes; returns how many were checked."""
        todo = self.unchecked()[: self.batch]
        if todo:
            self.check(todo, self.timeout)
        return len(todo)

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
