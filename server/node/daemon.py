"""The node daemon process: gRPC server with NodeService, health, reflection, tracing and clean shutdown.

Health is NOT_SERVING until the first probe round is done, then SERVING; on SIGTERM it flips back to
NOT_SERVING (so load balancers stop sending), in-flight RPCs drain for a grace period, and the process
exits 0.

Start-up does only what SERVING needs (issue 11: exec -> SERVING within 6x a bare interpreter): the
gRPC server, health, the probes and their first round. The WatchFeatures hub (server/node/feature_watch.py,
a fingerprint and a FeaturesChange message per round) is made on first use — by the first watcher, or
by warm_up() once SERVING is out — and is then given the latest round, so a watcher sees the same
features either way; reflection is imported on its first call (grpc_server.add_standard_services).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from nodecompat.server import DEFAULT_NODE_LISTEN, limits
from nodecompat.server.node.feature_cache import FeatureCache
from nodecompat.server.node.first_round import ForkedRound, StartupRunner, configured_probes
from nodecompat.server.node.node_service import NodeService, RegistryOptions, add_to_runtime
from nodecompat.server.runtime.grpc_server import (
    add_standard_services,
    bind,
    new_runtime,
    raise_open_file_limit,
    set_health,
)
from nodecompat.server.runtime.runtime import RuntimeLimits
from nodecompat.v1 import node_pb2

if TYPE_CHECKING:
    from nodecompat.hostroot import HostRoot
    from nodecompat.probes.probe_round import ProbeRound
    from nodecompat.probes.runner import ProbeRunner
    from nodecompat.server.node.feature_watch import FeatureWatchHub

log = logging.getLogger(__name__)

NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
WARM_UP_DELAY = 0.1  # s after SERVING before warm_up() starts
# What the first ValidateImage imports, leaves first (each import of a module also imports what it needs).
WARM_UP_MODULES = (
    "re2",
    "yaml",
    "nodecompat.engine.expressions",
    "nodecompat.engine.goregexp",  # imported by the first regex (expressions._prepare_regexes), not with expressions
    "nodecompat.engine.expression_regex",
    "nodecompat.engine.matcher",
    "nodecompat.engine.spec",
    "nodecompat.engine.report",
    "nodecompat.engine.evaluate",
    "nodecompat.probes.catalog",
)


@dataclass
class DaemonConfig:
    listen: str = DEFAULT_NODE_LISTEN
    host_root: str = "/"
    node_name: str = ""
    refresh_interval: float = 60.0
    min_refresh_interval: float = limits.MIN_REFRESH_INTERVAL
    probe_timeout: float | None = None
    probes: list[str] | None = None
    workers: int = limits.WORKERS
    max_concurrent_calls: int = limits.MAX_CONCURRENT_CALLS
    max_call_seconds: float = limits.DAEMON_MAX_CALL_SECONDS
    request_timeout: float = limits.REQUEST_TIMEOUT
    max_connection_idle: float = limits.MAX_CONNECTION_IDLE
    grace: float = 10.0
    hotplug: bool = True
    sysctl: list[str] = field(default_factory=list)  # extra kernel.sysctl names (serve --sysctl)
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    server_credentials: grpc.ServerCredentials | None = None
    # The first round from a child forked before gRPC was imported (serve: server/node/first_round.py); the
    # probes are then loaded on first use. None: loaded now, first round run here.
    first_round: ForkedRound | None = None


class NodeDaemon:
    """A running node daemon. start() binds and begins probing; stop() drains and stops."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.host: HostRoot | None = None  # set with the runner
        self.runner: ProbeRunner | StartupRunner
        if config.first_round is not None:
            self.runner = StartupRunner(self._probe_runner, config.first_round)
        else:
            self.runner = self._probe_runner()
        self.cache = FeatureCache(self.runner, config.refresh_interval, config.min_refresh_interval)
        rt_limits = RuntimeLimits(
            workers=config.workers,
            max_concurrent_calls=config.max_concurrent_calls,
            max_call_seconds=config.max_call_seconds,
            request_timeout=config.request_timeout,
        )
        self.runtime = new_runtime("rpc", rt_limits, config.max_connection_idle)
        self.service = NodeService(self.cache, config.node_name, config.registry)
        self._hub: FeatureWatchHub | None = None
        self._hub_lock = threading.Lock()
        self._latest: ProbeRound | None = None  # the last round, for a hub made after it
        self.service.watch_hub_source = self.watch_hub
        self.cache.on_round.append(self._feed_watch_hub)
        add_to_runtime(self.service, self.runtime)
        self.health = add_standard_services(self.runtime, [NODE_SERVICE])
        self.port = 0
        self._watcher: object | None = None
        self._stopped = threading.Event()
        self.on_stop: list[Callable[[], None]] = []

    def _probe_runner(self) -> ProbeRunner:
        """The probes (configured: node name, sysctl names) and their runner over the host root (imported
        here: with a start-up prober, the runner and the host readers are not needed before SERVING)."""
        from nodecompat.hostroot import HostRoot
        from nodecompat.probes.runner import ProbeRunner

        self.host = HostRoot(Path(self.config.host_root))
        probes, errors = configured_probes(self.config.probes, self.config.node_name, self.config.sysctl)
        return ProbeRunner(probes, self.host, errors, timeout=self.config.probe_timeout)

    def start(self) -> int:
        host, _, _ = self.config.listen.rpartition(":")
        soft, _hard = raise_open_file_limit()
        self.port = bind(self.runtime, self.config.listen, self.config.server_credentials)
        self.runtime.start()
        # SERVING first, then the round's other consumers (the watch hub)
        self.cache.on_round.insert(0, lambda _r: set_health(self.health, [NODE_SERVICE], True))
        if self.config.hotplug:  # watching before SERVING: a device added once SERVING is out is seen (the
            self._start_hotplug()  # start-up prober's round is often ready as soon as the cache asks)
        self.cache.start()
        log.info("node daemon %s serving on %s:%d (open-file limit %d)", self.config.node_name, host, self.port, soft)
        return self.port

    # -- WatchFeatures hub, made on first use --------------------------------------------------------
    def watch_hub(self) -> FeatureWatchHub:
        """The WatchFeatures hub, made (and given the latest round) on the first call."""
        with self._hub_lock:
            if self._hub is None:
                from nodecompat.server.node.feature_watch import FeatureWatchHub

                hub = FeatureWatchHub(self.config.node_name)
                if self._latest is not None:
                    hub.on_round(self._latest)
                self._hub = hub
            return self._hub

    def _feed_watch_hub(self, rnd: ProbeRound) -> None:
        with self._hub_lock:  # rounds reach the hub in order, each once
            self._latest = rnd
            if self._hub is not None:
                self._hub.on_round(rnd)

    def warm_up_after_first_round(self, delay: float = WARM_UP_DELAY) -> None:
        """Run warm_up() on a background thread `delay` seconds after the first probe round (health
        SERVING): it is left out of start-up, and doing it during the first round would slow that round
        (one GIL). The delay lets the health checks that follow SERVING be answered first: run at once,
        its imports held the GIL while the event loop needed it for each step of those calls.

        The thread is not a daemon thread, so interpreter exit waits for the import under way (stop()
        ends the warm-up at the next module). A daemon thread still importing at SIGTERM was the daemon's
        "terminate called without an active exception" abort (exit -6): Py_FinalizeEx makes a daemon
        thread that asks for the GIL call pthread_exit, and inside `re2`'s pybind11 module init (GIL
        released by gil_scoped_release) the forced unwind runs the noexcept ~gil_scoped_release, so
        std::terminate (tests/test_tracing_shutdown.py)."""
        once = threading.Lock()

        def later() -> None:
            if not self._stopped.wait(delay):
                self.warm_up()

        def after_round(_round: object) -> None:
            if once.acquire(blocking=False):
                threading.Thread(target=later, name="warm-up", daemon=False).start()  # joined at exit: see above

        self.cache.on_round.append(after_round)
        if self.cache.current(timeout=0) is not None:  # the first round ended before the hook was added
            after_round(None)

    def warm_up(self) -> None:
        """Import and build what start-up left out (the rule engine, the watch hub, reflection), so the
        first call does not pay for it. For after SERVING, on a background thread: a call that comes
        first imports what it needs itself (Python's import lock makes the two share the work). One
        module at a time, with a pause between them in which the event loop can take the GIL."""
        import importlib

        for module in WARM_UP_MODULES:
            if self._stopped.is_set():
                return
            importlib.import_module(module)
            time.sleep(0.001)
        if isinstance(self.runner, StartupRunner):  # the probes, for the next round and the catalog
            self.runner.runner()
            time.sleep(0.001)
        _ = self.service.catalog  # built from the probes' declarations on first use
        self.watch_hub()
        time.sleep(0.001)
        from nodecompat.server.runtime.grpc_server import warm_reflection

        warm_reflection()

    def _start_hotplug(self) -> None:
        try:
            from nodecompat.probes.hotplug import HotplugWatcher
        except ImportError:
            return
        watcher = HotplugWatcher(self.cache.poke)
        if watcher.start():
            self._watcher = watcher

    def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        set_health(self.health, [NODE_SERVICE], False)
        self.health.enter_graceful_shutdown()
        for cb in self.on_stop:
            try:
                cb()
            except Exception:
                log.exception("stop hook failed")
        self.cache.stop()
        if isinstance(self.runner, StartupRunner):
            self.runner.cancel_first()  # a child still probing: killed, and no round of our own
        if self._watcher is not None:
            self._watcher.stop()  # type: ignore[attr-defined]
        self.runtime.stop(self.config.grace if grace is None else grace)

    def wait(self) -> None:
        self.runtime.wait()
