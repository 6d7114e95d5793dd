"""`nodecompat aggregator`: run the fleet aggregator (FleetService) in front of node daemons."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import TYPE_CHECKING

from nodecompat.clients import exit_codes
from nodecompat.clients.cmd_serve import LOG_LEVELS, add_registry_policy_flag, registry_policy
from nodecompat.clients.runtime_args import add_runtime_flags, runtime_config, runtime_problem
from nodecompat.server import limits
from nodecompat.server.inventory.fleet_leases import DEFAULT_MAX_HEARTBEATS_PER_SECOND, MAX_SCALED_TTL
from nodecompat.server.inventory.fleet_nodes import MAX_REGISTRATIONS

if TYPE_CHECKING:
    from nodecompat.server.fleet.aggregator import AggregatorConfig
    from nodecompat.server.inventory.inventory_sync import SyncConfig

DEFAULT_LISTEN = "127.0.0.1:50050"
MIB = 1024 * 1024
DEFAULT_STATE_MAX_BYTES = 64 * MIB  # server/inventory/inventory_snapshot.py DEFAULT_MAX_BYTES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "aggregator",
        help="run the fleet aggregator (gRPC FleetService)",
        description="Run the fleet aggregator: keep the fleet's membership (--nodes-file, --dns, registrations "
        "from `serve --register`), answer FleetService (ValidateFleet, ListNodes) by asking every selected node "
        "daemon at once, with health and reflection, on --listen until SIGTERM/SIGINT.",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})")
    p.add_argument("--nodes-file", default=None, help="YAML/JSON list of {name, address, labels}; re-read on change")
    p.add_argument(
        "--dns",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="discover daemons from all A/AAAA records of NAME (repeatable)",
    )
    p.add_argument("--dns-interval", type=float, default=30.0, help="seconds between DNS re-resolutions")
    p.add_argument("--lease-ttl", type=float, default=30.0,
                   help="lease (s) granted to a registered node that asks for none")
    p.add_argument("--max-heartbeats-per-second", type=float, default=DEFAULT_MAX_HEARTBEATS_PER_SECOND,
                   metavar="RATE",
                   help="registered daemons renew every lease/3, so leases lengthen with their number to keep "
                   "all renewals under RATE a second: lease = max(--lease-ttl, 3 x leases / RATE x (1 + 0-10%% at "
                   "random)), "
                   f"the scaled part at most {MAX_SCALED_TTL:g} s (as Nomad's max_heartbeats_per_second); new "
                   "registrations count against RATE (renewals get RATE - new a second, at least RATE/2), and while "
                   "they alone exceed it (a restart: every daemon comes back) new registrations' leases are "
                   f"{MAX_SCALED_TTL / 2:g}-{MAX_SCALED_TTL:g} s at random. "
                   f"{DEFAULT_MAX_HEARTBEATS_PER_SECOND:g} is ~30%% of a core at ~1.4 ms a renewal; 10,000 nodes get "
                   "150-165 s leases, so a killed node is STALE after 2 beats + 1 s (~101 s) and leaves after 150 s; a "
                   "feature change is still pushed at once. 0: no scaling")
    p.add_argument(
        "--max-registrations",
        type=int,
        default=MAX_REGISTRATIONS,
        help=f"live registered nodes at most; more are refused with RESOURCE_EXHAUSTED (default {MAX_REGISTRATIONS})",
    )
    p.add_argument("--store", default="", metavar="etcd://HOST:PORT[,HOST:PORT...]",
                   help="share registrations with other aggregator replicas through etcd (default: in memory)")
    p.add_argument("--store-prefix", default="/nodecompat/", help="etcd key prefix of this fleet's registrations")
    p.add_argument("--store-ca", default=None, metavar="PEM",
                   help="CA verifying etcd's certificate: talk HTTPS to the --store endpoints")
    p.add_argument("--store-cert", default=None, metavar="PEM",
                   help="client certificate presented to etcd (its --client-cert-auth); with --store-key")
    p.add_argument("--store-key", default=None, metavar="PEM", help="private key of --store-cert")
    p.add_argument("--replica-id", default="", metavar="ID",
                   help="this replica's name among those sharing the inventory through --store (default: random; "
                   "a Deployment can pass the pod name)")
    p.add_argument("--state-file", default=None, metavar="PATH",
                   help="remember the registered nodes and their features in PATH (written atomically, mode 0600, at "
                   "most every 5 s when something changed and on a graceful stop) and hold them again at start: "
                   "each must renew within its lease or it leaves (docs/inventory.md, Restarts). One aggregator "
                   "per PATH (it locks .NAME.lock beside it; the directory must be writable). Not with --store")
    p.add_argument("--state-max-mib", type=float, default=DEFAULT_STATE_MAX_BYTES / MIB, metavar="MIB",
                   help=f"a snapshot larger than this is neither written nor read (default "
                   f"{DEFAULT_STATE_MAX_BYTES // MIB}; 10,000 nodes take 2.7 MB)")
    p.add_argument("--concurrency", type=int, default=64, help="node calls in flight at once")
    p.add_argument("--node-timeout", type=float, default=10.0, help="per-node deadline (s), inside the overall one")
    p.add_argument(
        "--pool-mib",
        type=float,
        default=limits.MAX_POOL_BYTES / MIB,
        help="MiB of node connections kept warm between fan-outs, at ~36 KiB each (default "
        f"{limits.MAX_POOL_BYTES // MIB}: ~{limits.MAX_POOL_BYTES // limits.CONNECTION_BYTES:,}); a smaller budget "
        "holds less memory and makes every node past it reconnect on each fan-out (slower)",
    )
    p.add_argument("--default-timeout", type=float, default=30.0, help="overall deadline when the request sets none")
    p.add_argument("--tls-cert", default=None, help="certificate (PEM): served, and presented to daemons")
    p.add_argument("--tls-key", default=None, help="private key (PEM) of --tls-cert")
    p.add_argument(
        "--tls-ca",
        default=None,
        help="CA (PEM): clients must present a certificate it signed, and daemons are verified with it",
    )
    p.add_argument("--ca-file", default=None, help="CA bundle for registries (ValidateFleet by image reference)")
    p.add_argument("--no-inventory", action="store_true",
                   help="do not keep a live inventory (WatchFeatures streams); every answer fans out live")
    p.add_argument("--heartbeat", type=float, default=10.0,
                   help="seconds between the daemons' heartbeats on their WatchFeatures streams (default 10)")
    p.add_argument("--watch-transport", choices=["grpc", "h2"], default=None,
                   help="the inventory's WatchFeatures streams and registered nodes' feature fetches: h2 (a lean "
                   "HTTP/2 client, server/h2/watch.py, ~6 KB a streamed node; same TLS files) or grpc (a gRPC core "
                   "channel each, ~54 KB a node); default h2")
    p.add_argument("--fanout-transport", choices=["grpc", "h2"], default=None,
                   help="the live fan-out's calls (ValidateFleet LIVE, what-if, ListNodes health): grpc (a gRPC "
                   "core channel a node, ~36 KiB kept warm) or h2 (the lean HTTP/2 client, server/h2/unary.py, ~4 KiB; "
                   "same TLS files); default: as --watch-transport (h2)")
    p.add_argument("--stale-after", type=float, default=0.0,
                   help="a node whose stream is silent this long is STALE (default: 3 heartbeats + 1 s)")
    add_registry_policy_flag(p, "ValidateFleet")
    p.add_argument("--registration-token-file", default=None, metavar="FILE",
                   help="shared token daemons must send to register (serve --registration-token-file); "
                   "without TLS this or --allow-unauthenticated-registration enables registration")
    p.add_argument("--registration-identities", default=None, metavar="FILE",
                   help="under mTLS: YAML/JSON {node-name: [dns:NAME|uri:URI, ...]} granting certificate "
                   "identities node names besides their own SAN DNS names")
    p.add_argument("--allow-unauthenticated-registration", action="store_true",
                   help="let any caller register nodes (no mTLS, no token): for trusted networks only")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="log verbosity")
    add_runtime_flags(p, max_call_seconds=limits.AGGREGATOR_MAX_CALL_SECONDS)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> AggregatorConfig:
    """AggregatorConfig from the flags; ValueError/TlsConfigError with a message naming the flag."""
    from nodecompat.server import tls
    from nodecompat.server.fleet.aggregator import AggregatorConfig
    from nodecompat.server.inventory.fleet_nodes import parse_dns_target
    from nodecompat.server.node.node_service import RegistryOptions

    problem = runtime_problem(args)
    if problem:
        raise ValueError(problem)
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    if not (math.isfinite(args.pool_mib) and args.pool_mib * MIB >= limits.CONNECTION_BYTES):
        raise ValueError(f"--pool-mib must be at least {limits.CONNECTION_BYTES / MIB:.3f} (one connection)")
    if not (math.isfinite(args.max_heartbeats_per_second) and args.max_heartbeats_per_second >= 0):
        raise ValueError("--max-heartbeats-per-second must be >= 0 (0: leases are not scaled)")
    if args.max_registrations < 0:
        raise ValueError("--max-registrations must be >= 0 (0: nodes cannot register)")
    for flag in ("node_timeout", "default_timeout", "lease_ttl", "dns_interval"):
        if not getattr(args, flag) > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0")
    if args.ca_file and not os.path.isfile(args.ca_file):
        raise ValueError(f"--ca-file {args.ca_file} is not a readable file")
    for flag in ("store_ca", "store_cert", "store_key"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise ValueError(f"--{flag.replace('_', '-')} {path} is not a readable file")
        if path and not args.store.startswith("etcd://"):
            raise ValueError(f"--{flag.replace('_', '-')} is for --store etcd://...")
    if bool(args.store_cert) != bool(args.store_key):
        raise ValueError("--store-cert and --store-key go together (the client certificate and its key)")
    if args.replica_id and (not args.replica_id.isprintable() or "/" in args.replica_id or len(args.replica_id) > 128):
        raise ValueError("--replica-id: at most 128 printable characters, no '/'")
    if args.state_file is not None:
        if args.store:
            raise ValueError("--state-file is for one aggregator: replicas sharing --store etcd:// hold their "
                             "registrations in etcd already (docs/inventory.md, Restarts)")
        state_dir = os.path.dirname(os.path.abspath(args.state_file))
        if not args.state_file or not os.path.isdir(state_dir):
            raise ValueError(f"--state-file {args.state_file!r}: its directory {state_dir} does not exist")
    if not (math.isfinite(args.state_max_mib) and 0 < args.state_max_mib <= 4096):
        raise ValueError("--state-max-mib must be within (0, 4096]")
    server_creds = node_creds = None
    if args.tls_cert or args.tls_key:
        server_creds = tls.server_credentials(args.tls_cert, args.tls_key, args.tls_ca)
    if args.tls_ca or args.tls_cert:
        node_creds = tls.channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    from nodecompat.oci.auth import RegistryAuth
    from nodecompat.oci.errors import RegistryError

    try:  # registry credentials for ValidateFleet by reference: the docker config's `auths`, as the daemon
        registry_auth = RegistryAuth.from_sources(ca_file=args.ca_file)
    except RegistryError as exc:
        raise ValueError(f"registry credentials: {exc}") from None
    from nodecompat.server.inventory.registration_auth import RegistrationPolicy, load_identity_map, read_token_file

    if args.registration_identities and not args.tls_ca:
        raise ValueError("--registration-identities maps client certificates: it needs --tls-ca (mutual TLS)")
    registration = RegistrationPolicy(
        mtls=bool(args.tls_ca and args.tls_cert),
        token=read_token_file(args.registration_token_file) if args.registration_token_file else None,
        identity_map=load_identity_map(args.registration_identities) if args.registration_identities else {},
        allow_unauthenticated=args.allow_unauthenticated_registration,
    )
    return AggregatorConfig(
        registration=registration,
        listen=args.listen,
        nodes_file=args.nodes_file,
        dns=[parse_dns_target(d) for d in args.dns],
        dns_interval=args.dns_interval,
        lease_ttl=args.lease_ttl,
        max_heartbeats_per_second=args.max_heartbeats_per_second,
        max_registrations=args.max_registrations,
        store=args.store,
        store_prefix=args.store_prefix,
        store_ca=args.store_ca,
        store_cert=args.store_cert,
        store_key=args.store_key,
        replica_id=args.replica_id,
        state_file=args.state_file,
        state_max_bytes=int(args.state_max_mib * MIB),
        concurrency=args.concurrency,
        node_timeout=args.node_timeout,
        pool_bytes=int(args.pool_mib * MIB),
        default_timeout=args.default_timeout,
        server_credentials=server_creds,
        node_credentials=node_creds,
        # as --watch-transport (h2 when neither is given)
        fanout_transport=args.fanout_transport or getattr(args, "watch_transport", None) or "h2",
        node_tls=tls.ClientTls(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls_ca or args.tls_cert) else None,
        registry=RegistryOptions(ca_file=args.ca_file, auth=registry_auth, policy=registry_policy(args)),
        sync=None if args.no_inventory else _sync_config(args),
        **runtime_config(args),  # type: ignore[arg-type]
    )


def _sync_config(args: argparse.Namespace) -> SyncConfig:
    from nodecompat.server.inventory.inventory_sync import SyncConfig

    if not (1.0 <= args.heartbeat <= 300.0):
        raise ValueError(f"--heartbeat must be within [1, 300] seconds, got {args.heartbeat:g}")
    if args.stale_after and args.stale_after < args.heartbeat:
        raise ValueError(f"--stale-after ({args.stale_after:g}) must be at least --heartbeat ({args.heartbeat:g})")
    from nodecompat.server.tls import ClientTls

    files = ClientTls(args.tls_ca, args.tls_cert, args.tls_key) if (args.tls_ca or args.tls_cert) else None
    return SyncConfig(heartbeat=args.heartbeat, stale_after=args.stale_after,
                      watch_transport=getattr(args, "watch_transport", None) or "h2", watch_tls=files)


def run(args: argparse.Namespace) -> int:
    from nodecompat.clients.listen_check import listen_problem
    from nodecompat.server import telemetry
    from nodecompat.server.fleet.aggregator import AggregatorDaemon
    from nodecompat.server.runtime.grpc_server import run_until_signal

    problem = listen_problem(args.listen)
    if problem:
        print(f"nodecompat aggregator: {problem}", file=sys.stderr)
        return exit_codes.ERROR
    from nodecompat.server.runtime.malloc_tuning import limit_arenas

    limit_arenas()  # before any thread starts (tracing's exporter, the server's): server/runtime/malloc_tuning.py
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        provider = telemetry.init_tracing("nodecompat-aggregator")
    except ValueError as exc:
        print(f"nodecompat aggregator: tracing: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    try:
        daemon = AggregatorDaemon(build_config(args))
        # before start(): the inventory's resubscribe to every known node begins inside it (server/runtime/gc_tuning.py)
        tune_for_serving()
        port = daemon.start()
    except (ValueError, OSError) as exc:
        print(f"nodecompat aggregator: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    host = args.listen.rpartition(":")[0]
    print(f"nodecompat: aggregator serving on {host}:{port}", file=sys.stderr, flush=True)
    run_until_signal(daemon.stop, daemon.wait)
    if provider is not None:
        provider.shutdown()
    return 0
