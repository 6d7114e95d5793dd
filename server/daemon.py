"""The node daemon process: gRPC server with NodeService, health, reflection, tracing and clean shutdown.

Health is NOT_SERVING until the first probe round is done, then SERVING; on SIGTERM it flips back to
NOT_SERVING (so load balancers stop sending), in-flight RPCs drain for a grace period, and the process
exits 0.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from nodecompat.hostroot import HostRoot
from nodecompat.probes.registry import load_probes
from nodecompat.probes.runner import ProbeRunner
from nodecompat.server import DEFAULT_NODE_LISTEN, limits
from nodecompat.server.feature_cache import FeatureCache
from nodecompat.server.feature_watch import FeatureWatchHub
from nodecompat.server.grpc_server import (
    add_standard_services,
    bind,
    new_runtime,
    raise_open_file_limit,
    set_health,
)
from nodecompat.server.node_service import NodeService, RegistryOptions, add_to_runtime
from nodecompat.server.runtime import RuntimeLimits
from nodecompat.v1 import node_pb2

log = logging.getLogger(__name__)

NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name


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


class NodeDaemon:
    """A running node daemon. start() binds and begins probing; stop() drains and stops."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        probes, errors = load_probes(config.probes)
        self.host = HostRoot(Path(config.host_root))
        for p in probes:  # the system probe reports the daemon's node name as system.name.nodename
            if hasattr(p, "node_name") and config.node_name:
                p.node_name = config.node_name
            if hasattr(p, "sysctl_extra") and config.sysctl:
                p.sysctl_extra = list(config.sysctl)
        self.runner = ProbeRunner(probes, self.host, errors, timeout=config.probe_timeout)
        self.cache = FeatureCache(self.runner, config.refresh_interval, config.min_refresh_interval)
        rt_limits = RuntimeLimits(
            workers=config.workers,
            max_concurrent_calls=config.max_concurrent_calls,
            max_call_seconds=config.max_call_seconds,
            request_timeout=config.request_timeout,
        )
        self.runtime = new_runtime("rpc", rt_limits, config.max_connection_idle)
        self.service = NodeService(self.cache, config.node_name, config.registry)
        self.watch_hub = FeatureWatchHub(config.node_name)
        self.cache.on_round.append(self.watch_hub.on_round)
        self.service.watch_hub = self.watch_hub
        add_to_runtime(self.service, self.runtime)
        self.health = add_standard_services(self.runtime, [NODE_SERVICE])
        self.port = 0
        self._watcher: object | None = None
        self._stopped = threading.Event()
        self.on_stop: list[Callable[[], None]] = []

    def start(self) -> int:
        host, _, _ = self.config.listen.rpartition(":")
        soft, _hard = raise_open_file_limit()
        self.port = bind(self.runtime, self.config.listen, self.config.server_credentials)
        self.runtime.start()
        self.cache.on_round.append(lambda _r: set_health(self.health, [NODE_SERVICE], True))
        self.cache.start()
        if self.config.hotplug:
            self._start_hotplug()
        log.info("node daemon %s serving on %s:%d (open-file limit %d)", self.config.node_name, host, self.port, soft)
        return self.port

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
        if self._watcher is not None:
            self._watcher.stop()  # type: ignore[attr-defined]
        self.runtime.stop(self.config.grace if grace is None else grace)

    def wait(self) -> None:
        self.runtime.wait()
