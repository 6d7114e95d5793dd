"""Hotplug watching: re-probe when a PCI, network or DRM device appears, goes or changes.

Polling sysfs every N seconds either wastes work or reacts late; the kernel announces device
changes as uevents on a netlink socket. We listen to the *kernel* source (not udev's), because
many nodes and containers (this sandbox included) run no udevd, so udev-sourced events never come.
Events arrive in bursts (a NIC brings a PCI function, a netdev and queues), so calls are debounced:
`on_change` is called once, `debounce` seconds after the last event of a burst (but at most
`max_delay` seconds after its first event, so a steady trickle of uevents cannot postpone a
re-probe for ever), with a short description of what happened. When netlink is not available (no
privilege, no pyudev) start() returns False and logs why; the caller then keeps its periodic probing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


class HotplugWatcher:
    """Calls `on_change(description)` after add/remove/change uevents of the given subsystems."""

    def __init__(
        self,
        on_change: Callable[[str], None],
        subsystems: Iterable[str] = ("pci", "net", "drm"),
        debounce: float = 0.5,
        max_delay: float = 5.0,
    ) -> None:
        self.on_change = on_change
        self.subsystems = tuple(subsystems)
        self.debounce = debounce
        self.max_delay = max_delay
        self.why_unavailable: str | None = None
        self._monitor: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> bool:
        """Open the netlink monitor and start the watching thread; False (logged) if impossible."""
        if self._thread is not None:
            return True
        try:
            import pyudev

            ctx = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(ctx, source="kernel")
            for sub in self.subsystems:
                monitor.filter_by(sub)
            monitor.start()
        except Exception as exc:  # ImportError, OSError (EPERM/EPROTONOSUPPORT), pyudev errors
            self.why_unavailable = f"uevent netlink monitor unavailable: {type(exc).__name__}: {exc}"
            log.warning("%s; hotplug changes will only be seen by periodic probing", self.why_unavailable)
            return False
        self._monitor = monitor
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hotplug-watcher", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (within about 0.2 s) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        # pyudev's Monitor closes its netlink socket when the libudev handle is released, which
        # happens once the last reference (ours, and the stopped thread's) is gone.
        self._monitor = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        pending: list[str] = []
        deadline: float | None = None
        first: float | None = None
        monitor = self._monitor
        while not self._stop.is_set():
            try:
                device = monitor.poll(timeout=0.1)
            except Exception as exc:  # socket closed or broken: stop quietly, say why
                log.warning("hotplug monitor stopped: %s", exc)
                return
            if device is not None and device.action in ("add", "remove", "change", "bind", "unbind"):
                now = time.monotonic()
                pending.append(f"{device.action} {device.subsystem} {device.sys_name}")
                first = now if first is None else first
                deadline = min(now + self.debounce, first + self.max_delay)
            if deadline is not None and time.monotonic() >= deadline:
                description = _summarise(pending)
                pending, deadline, first = [], None, None
                try:
                    self.on_change(description)
                except Exception:
                    log.exception("hotplug on_change callback failed")


def _summarise(events: list[str], limit: int = 5) -> str:
    unique = list(dict.fromkeys(events))
    text = ", ".join(unique[:limit])
    if len(unique) > limit:
        text += f" (+{len(unique) - limit} more)"
    return text
