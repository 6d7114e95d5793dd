"""The fleet aggregator's process object: AggregatorConfig and AggregatorDaemon (load, bind, serve, stop).

The servicer, FleetService (ValidateFleet, ListNodes, node registration), is server/fleet/fleet_service.py;
message conversion (NodeResult, FleetSummary) is server/fleet/fleet_results.py; membership is
server/inventory/fleet_nodes.py and fan-out is server/fleet/fanout.py. The names they define that were imported from
this module before the split are re-exported here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from nodecompat.fleet.reasons import failure_reasons
from nodecompat.fleet.store import FeatureStore
from nodecompat.server import limits
from nodecompat.server.fleet.fanout import ChannelPool, FanOut, FanoutConfig
from nodecompat.server.fleet.fleet_bytes import serialize_or_pass
from nodecompat.server.fleet.fleet_results import deadline_margin, summarize
from nodecompat.server.fleet.fleet_service import (
    FLEET_SERVICE,
    HEALTH_STALE_AFTER,
    MAX_TIMEOUT,
    AggregatorOptions,
    FleetService,
)
from nodecompat.server.fleet.fleet_watch import FleetWatchHub
from nodecompat.server.inventory.first_check import FirstHealthChecks
from nodecompat.server.inventory.fleet_leases import DEFAULT_MAX_HEARTBEATS_PER_SECOND
from nodecompat.server.inventory.fleet_nodes import MAX_REGISTRATIONS, FleetNode, NodeInventory
from nodecompat.server.inventory.inventory_snapshot import (
    DEFAULT_MAX_BYTES,
    WRITE_INTERVAL,
    SnapshotWriter,
    load_snapshot,
)
from nodecompat.server.inventory.inventory_sync import InventorySync, SyncConfig
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.server.inventory.registration_health import set_registration_health, watch_registration_health
from nodecompat.server.inventory.registration_store import open_registration_store
from nodecompat.server.node.node_service import RegistryOptions
from nodecompat.server.runtime.grpc_server import (
    add_standard_services,
    bind,
    new_runtime,
    raise_open_file_limit,
    set_health,
)
from nodecompat.server.runtime.runtime import RuntimeLimits
from nodecompat.server.tls import ClientTls
from nodecompat.v1 import fleet_pb2

if TYPE_CHECKING:
    from nodecompat.server.h2.call import H2Options
    from nodecompat.server.inventory.inventory_shards import InventoryShards

__all__ = [
    "FLEET_SERVICE",
    "HEALTH_STALE_AFTER",
    "MAX_TIMEOUT",
    "AggregatorConfig",
    "AggregatorDaemon",
    "AggregatorOptions",
    "FanOut",
    "FleetService",
    "deadline_margin",
    "failure_reasons",
    "summarize",
]

log = logging.getLogger(__name__)


@dataclass
class AggregatorConfig:
    listen: str = "127.0.0.1:50050"
    nodes_file: str | None = None
    dns: list[tuple[str, int]] = field(default_factory=list)
    dns_interval: float = 30.0
    lease_ttl: float = 30.0
    # Leases lengthen with their number so that all their heartbeats stay under this many RegisterNode a second
    # (inventory/fleet_leases.py grant_ttl; `--max-heartbeats-per-second`); 0: every lease is lease_ttl or as asked.
    max_heartbeats_per_second: float = DEFAULT_MAX_HEARTBEATS_PER_SECOND
    max_registrations: int = MAX_REGISTRATIONS
    concurrency: int = 64
    node_timeout: float = 10.0
    # Bytes of node connections kept warm between fan-outs (server/fleet/channel_pool.py; limits.MAX_POOL_BYTES):
    # less memory, and every node past it reconnects on each fan-out (`--pool-mib`).
    pool_bytes: int = limits.MAX_POOL_BYTES
    # The live fan-out's transport (ValidateFleet LIVE, what-if live, ListNodes health checks): "h2"
    # (server/h2/unary.py, ~4 KiB kept a node; the default, as the streams') or "grpc" (a grpc.aio channel a node,
    # ~36 KiB kept);
    # `--fanout-transport`, which follows `--watch-transport`. TLS for h2: the PEM files node_credentials were made
    # from (node_tls); credentials without them fall back to grpc (fanout_h2_options).
    fanout_transport: str = "h2"
    node_tls: ClientTls | None = None
    default_timeout: float = 30.0
    workers: int = limits.WORKERS
    max_concurrent_calls: int = limits.MAX_CONCURRENT_CALLS
    max_call_seconds: float = limits.AGGREGATOR_MAX_CALL_SECONDS
    request_timeout: float = limits.REQUEST_TIMEOUT
    max_connection_idle: float = limits.MAX_CONNECTION_IDLE
    grace: float = 5.0
    server_credentials: grpc.ServerCredentials | None = None
    # Credentials the aggregator uses to reach the daemons (mTLS: with its client certificate).
    node_credentials: grpc.ChannelCredentials | None = None
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    # Health-check each node as soon as it appears (server/inventory/first_check.py); benches may turn it off.
    check_new_nodes: bool = True
    # The live inventory (issue 12): WatchFeatures streams to every member; None: answer live only.
    sync: SyncConfig | None = field(default_factory=SyncConfig)
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)
    # Shared registrations (issue 14): "" keeps them in memory; etcd://HOST:PORT[,...] (server/inventory/store_etcd.py).
    store: str = ""
    store_prefix: str = "/nodecompat/"
    store_ca: str | None = None  # etcd over HTTPS: CA, client certificate and key (PEM paths)
    store_cert: str | None = None
    store_key: str | None = None
    # s an idle etcd watch stream is kept before it is re-opened (None: etcd_kv.WATCH_READ_TIMEOUT); it also bounds
    # how long stop() waits for each watch. Tests pass a shorter one.
    store_watch_read_timeout: float | None = None
    # This replica's name among those sharing the inventory through the store (server/inventory/inventory_shards.py);
    # "" picks a random one. A Deployment can pass the pod name.
    replica_id: str = ""
    # The inventory snapshot (server/inventory/inventory_snapshot.py): None keeps nothing across restarts.
    state_file: str | None = None
    state_max_bytes: int = DEFAULT_MAX_BYTES  # a bigger snapshot is not written (`--state-max-mib`)
    state_interval: float = WRITE_INTERVAL  # s: at most one write this often, when something changed


def fanout_h2_options(config: AggregatorConfig) -> H2Options | None:
    """The lean client's options for the fan-out (None: the grpc client). None for fanout_transport "grpc", and for
    "h2" under TLS given as node_credentials without the PEM files (node_tls) they were made from: gRPC does not
    expose the certificates inside a credentials object, so the fan-out then uses grpc, logged once at WARNING
    (as the streams do: server/inventory/watch_transport.py choose_h2). Raises ValueError for an unknown transport,
    TlsConfigError/ssl.SSLError for bad files."""
    if config.fanout_transport == "grpc":
        return None
    if config.fanout_transport != "h2":
        raise ValueError(f"fanout_transport must be grpc or h2, not {config.fanout_transport!r}")
    from nodecompat.server.h2.call import H2Options, ssl_context
    from nodecompat.server.runtime.grpc_server import MAX_MESSAGE_BYTES

    tls = config.node_credentials is not None
    if tls and (config.node_tls is None or not config.node_tls.enabled):
        log.warning("the live fan-out uses the grpc client, not h2: the aggregator was given node credentials "
                    "without their PEM files; pass AggregatorConfig(node_tls=ClientTls(ca, cert, key)) with the "
                    "files the credentials were made from (the --tls-* flags do), or fanout_transport='grpc' to "
                    "choose grpc and silence this")
        return None
    return H2Options(ssl=ssl_context(config.node_tls) if tls and config.node_tls else None,
                     max_message=MAX_MESSAGE_BYTES)


class AggregatorDaemon:
    """A running aggregator. start() loads the inventory (NodesFileError on a bad file), binds, serves."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.inventory = NodeInventory(
            nodes_file=config.nodes_file,
            dns=config.dns,
            dns_interval=config.dns_interval,
            lease_ttl=config.lease_ttl,
            max_heartbeats_per_second=config.max_heartbeats_per_second,
            max_registrations=config.max_registrations,
            store=open_registration_store(config.store, config.store_prefix, ca=config.store_ca,
                                          cert=config.store_cert, key=config.store_key,
                                          watch_read_timeout=config.store_watch_read_timeout),
        )
        rt_limits = RuntimeLimits(
            workers=config.workers,
            max_concurrent_calls=config.max_concurrent_calls,
            max_call_seconds=config.max_call_seconds,
            request_timeout=config.request_timeout,
        )
        self.runtime = new_runtime("fleet-rpc", rt_limits, config.max_connection_idle)
        # The fan-out runs on the server's own loop: grpc.aio wakes every loop it knows for each completion and
        # forwards it to the one that owns the call, so a separate fan-out loop cost a second wake-up per node.
        self.pool = ChannelPool(config.node_credentials, max_bytes=config.pool_bytes, loop=self.runtime.loop,
                                h2=fanout_h2_options(config))
        self.fanout = FanOut(self.pool, FanoutConfig(concurrency=config.concurrency, node_timeout=config.node_timeout))
        self.service = FleetService(
            self.inventory,
            self.fanout,
            AggregatorOptions(
                default_timeout=config.default_timeout, registry=config.registry, registration=config.registration
            ),
        )
        self.first_checks = FirstHealthChecks(self.inventory, self.service.check_health)
        # A lease renewal (10,000 daemons: 1,000 a second) is answered on the loop unless it would wait.
        self.runtime.add_servicer(self.service, fleet_pb2.DESCRIPTOR.services_by_name["FleetService"],
                                  {"ValidateFleet": serialize_or_pass},  # answers from fleet_bytes.py: bytes
                                  call_fast_paths={"RegisterNode": self.service.register_on_loop})
        self.health = add_standard_services(self.runtime, [FLEET_SERVICE])
        self.port = 0
        self._stopped = threading.Event()
        self.store: FeatureStore | None = None
        self.sync: InventorySync | None = None
        self.shards: InventoryShards | None = None
        watch_registration_health(self.health, self.inventory.store)
        if config.sync is not None:
            self.store = FeatureStore()
            reported = lambda address, name: self.inventory.record_contact(address, "SERVING", name)  # noqa: E731
            members: Callable[[], list[FleetNode]] = self.inventory.nodes
            etcd = getattr(self.inventory.store, "etcd", None)
            if etcd is not None:  # registrations in etcd: the replicas share the subscriptions out
                from nodecompat.server.inventory.inventory_shards import InventoryShards

                shards = self.shards = InventoryShards(
                    etcd, config.store_prefix, self.inventory.nodes, self.store, replica_id=config.replica_id,
                    stale_timeout=config.sync.stale_timeout, on_reported_name=reported)
                members = lambda: shards.subscribed(self.inventory.nodes())  # noqa: E731
            # Registrations announcing their state are fetched once per change, not watched (push model,
            # inventory/inventory_push.py); replicas sharing etcd keep streams for every node (docs/inventory.md).
            self.sync = InventorySync(members, self.store, config.node_credentials, config.sync, reported,
                                      push=self.shards is None)
            self.service.push = self.sync.push
            self.service.store = self.store
            self.service.fleet_watch = FleetWatchHub(self.store, self.inventory.nodes)
        self.state: SnapshotWriter | None = None
        if config.state_file:
            if self.inventory.store is not None:
                raise ValueError("--state-file is for one aggregator: replicas sharing --store etcd:// hold their "
                                 "registrations in etcd already (docs/inventory.md, Restarts)")
            self.state = SnapshotWriter(config.state_file, self.inventory, self.store,
                                        max_bytes=config.state_max_bytes, interval=config.state_interval,
                                        health=self.health, busy=self.sync.resubscribing if self.sync else None)

    def start(self) -> int:
        self.inventory.load()
        if self.state is not None:  # before serving: restored nodes are answered from the first call
            self.state.claim()
            load_snapshot(self.state.path, self.inventory, self.store, self.sync.push if self.sync else None,
                          max_bytes=self.config.state_max_bytes)
            if self.sync is not None and self.store is not None:  # gone from the nodes file before the first reconcile
                self.sync.note_restored(r.key for r in self.store.records())
        raise_open_file_limit()
        self.port = bind(self.runtime, self.config.listen, self.config.server_credentials)
        self.runtime.start()
        self.inventory.start()
        if self.config.check_new_nodes:
            self.first_checks.start()
        if self.shards is not None:
            self.shards.start()
        if self.sync is not None:
            self.sync.start()
        if self.state is not None:
            self.state.start()
        set_health(self.health, [FLEET_SERVICE], True)
        set_registration_health(self.health, self.inventory.store)
        log.info("aggregator serving on %s (port %d); %s", self.config.listen, self.port,
                 self.config.registration.describe())
        return self.port

    def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        set_health(self.health, [FLEET_SERVICE], False)
        self.health.enter_graceful_shutdown()
        self.first_checks.stop()
        self.runtime.stop(self.config.grace if grace is None else grace)
        if self.state is not None:  # no RPC changes it any more: the last write
            self.state.stop()
        if self.shards is not None:
            self.shards.stop()
        if self.sync is not None:
            self.sync.stop()
        self.inventory.stop()
        self.pool.close()

    def wait(self) -> None:
        self.runtime.wait()
