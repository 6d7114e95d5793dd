"""`nodecompat serve`: run the node daemon.

Defaults are the embedded ones a newcomer needs: this machine's own /sys and /proc, loopback only.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

from nodecompat.clients import exit_codes
from nodecompat.clients.runtime_args import add_runtime_flags, runtime_config, runtime_problem
from nodecompat.server import DEFAULT_NODE_LISTEN as DEFAULT_LISTEN
from nodecompat.server import limits

if TYPE_CHECKING:
    from nodecompat.oci.policy import RegistryPolicy
    from nodecompat.server.node.daemon import NodeDaemon
    from nodecompat.server.node.first_round import ForkedRound

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the node daemon (gRPC NodeService)",
        description="Run the node daemon: probe this host (or --host-root) and answer NodeService "
        "(GetFeatures, ValidateImage), health and reflection on --listen until SIGTERM/SIGINT. "
        "Tracing is on when OTEL_* variables ask for it (the log says where spans go).",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN})")
    p.add_argument("--host-root", default="/", help="read the host under this root (default /)")
    p.add_argument("--node-name", default="", help="node name (default: $NODE_NAME or the hostname)")
    p.add_argument("--refresh-interval", type=_positive, default=60.0, help="seconds between probe rounds (>= 1)")
    p.add_argument("--min-refresh-interval", type=float, default=limits.MIN_REFRESH_INTERVAL,
                   help="GetFeatures(refresh=true) probes at most once per this many seconds; callers in "
                   f"between get the last round (default {limits.MIN_REFRESH_INTERVAL:g}, 0: every call probes)")
    p.add_argument("--probe-timeout", type=_positive, default=None,
                   help="override every probe's timeout in seconds (default: each probe's own)")
    p.add_argument("--probes", default=None, help="comma-separated probe names to run (default: all installed probes)")
    p.add_argument("--no-hotplug", action="store_true", help="do not re-probe on device hot-plug events")
    p.add_argument("--sysctl", action="append", default=None, metavar="NAME[,NAME...]",
                   help="extra /proc/sys settings for kernel.sysctl, e.g. net.ipv4.tcp_rmem (repeatable; "
                   "a documented allow-list is always read, see docs/features.md)")
    p.add_argument("--ca-file", default=None, help="CA bundle for registries (ValidateImage by reference)")
    add_registry_policy_flag(p, "ValidateImage")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="log verbosity")
    p.set_defaults(func=run)
    p.add_argument("--tls-cert", default=None, help="server certificate (PEM); enables TLS")
    p.add_argument("--tls-key", default=None, help="server private key (PEM)")
    p.add_argument("--tls-ca", default=None, help="CA (PEM) clients must be signed by: enables mutual TLS")
    p.add_argument("--register", action="append", default=None, metavar="AGGREGATOR[,AGGREGATOR...]",
                   help="keep a lease with this aggregator; several (comma-separated or repeated): replicas tried "
                   "in order, failing over when one cannot be reached")
    p.add_argument("--advertise", default=None,
                   help="HOST:PORT the aggregator should dial (default: the --listen address)")
    p.add_argument("--registration-token-file", default=None, metavar="FILE",
                   help="the fleet's shared registration token (the aggregator's --registration-token-file)")
    p.add_argument("--labels", default="", help="comma-separated k=v labels announced on registration")
    add_runtime_flags(p, max_call_seconds=limits.DAEMON_MAX_CALL_SECONDS)


def add_registry_policy_flag(p: argparse.ArgumentParser, rpc: str) -> None:
    """--allowed-registries, shared by serve and aggregator (syntax: nodecompat.oci.policy)."""
    p.add_argument(
        "--allowed-registries",
        nargs="+",
        action="extend",
        default=None,
        metavar="PATTERN",
        help=f"registries {rpc} may fetch from by image reference: [http://]HOST[:PORT], '*' within a "
        "DNS label or as the port; http:// also allows plain HTTP (e.g. http://127.0.0.1:5000). "
        "Default: none (inline specs only). See docs/security.md",
    )


def registry_policy(args: argparse.Namespace) -> RegistryPolicy:
    """The RegistryPolicy of --allowed-registries; ValueError naming the flag."""
    from nodecompat.oci.policy import RegistryPolicy

    return RegistryPolicy.parse(args.allowed_registries or ())


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be greater than 0")
    return value


def check_args(args: argparse.Namespace) -> str:
    """What is wrong with the flags, or "" (checked before anything starts)."""
    from nodecompat.hostport import is_wildcard_host, split_address
    from nodecompat.hostroot import HostRoot

    try:
        HostRoot.checked(args.host_root)
    except ValueError as exc:
        return str(exc)
    if args.ca_file and not os.path.isfile(args.ca_file):
        return f"--ca-file {args.ca_file} is not a readable file"
    if getattr(args, "sysctl", None):
        from nodecompat.probes.sysctl import parse_names

        try:
            parse_names(args.sysctl)
        except ValueError as exc:
            return str(exc)
    try:
        registry_policy(args)
    except ValueError as exc:
        return str(exc)
    if args.node_name:
        from nodecompat.server.inventory.fleet_nodes import name_problem

        problem = name_problem(args.node_name)
        if problem:
            return f"--node-name: {problem}"
    problem = runtime_problem(args)
    if problem:
        return problem
    if not args.min_refresh_interval >= 0:
        return "--min-refresh-interval must be >= 0"
    if args.refresh_interval < 1:
        return "--refresh-interval must be at least 1 second"
    try:
        host, _port = split_address(args.listen)
    except ValueError as exc:
        return f"--listen {exc}"
    if args.probes:
        wanted = [n.strip() for n in args.probes.split(",") if n.strip()]
        valid = probe_names()
        unknown = [n for n in wanted if n not in valid]
        if unknown or not wanted:
            return (f"--probes: no probe named {', '.join(repr(n) for n in unknown) or 'given'}; "
                    f"valid names: {', '.join(valid)}")
        from nodecompat.probes.registry import load_probes

        _, errors = load_probes(wanted)
        if errors:
            return "--probes: " + "; ".join(e.error for e in errors)
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    if args.tls_ca and not args.tls_cert:
        return "--tls-ca (mutual TLS) needs --tls-cert and --tls-key"
    if args.registration_token_file:
        from nodecompat.server.inventory.registration_auth import read_token_file

        try:
            read_token_file(args.registration_token_file)
        except ValueError as exc:
            return str(exc)
        if not args.register:
            return "--registration-token-file is for --register"
    if args.register:
        from nodecompat.server.node.registration import parse_aggregators

        try:
            for aggregator in parse_aggregators(args.register):
                split_address(aggregator)  # its message quotes the address
        except ValueError as exc:
            return f"--register {exc}"
        if is_wildcard_host(host) and not args.advertise:
            return (f"--listen {args.listen} is a wildcard address the aggregator cannot dial: "
                    "give --advertise HOST:PORT (this node's reachable address)")
        if args.advertise:
            try:
                split_address(args.advertise)
            except ValueError as exc:
                return f"--advertise {exc}"
    bad = [kv for kv in args.labels.split(",") if kv.strip() and "=" not in kv]
    if bad:
        return f"--labels: expected k=v, got {', '.join(bad)}"
    return ""


def probe_names() -> list[str]:
    """Names of the installed probes (the `nodecompat.probes` entry-point group), sorted."""
    from nodecompat.probes.registry import probe_names as installed

    return installed()


def _sysctl_names(args: argparse.Namespace) -> list[str]:
    if not getattr(args, "sysctl", None):
        return []
    from nodecompat.probes.sysctl import parse_names

    return parse_names(getattr(args, "sysctl", None))


def node_name_default() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


def _collect_garbage_from_first_round(daemon: NodeDaemon) -> None:
    """Turn the cyclic garbage collector back on (run() turned it off) once the first probe round is
    done, or at the latest GC_OFF_AT_MOST seconds from now. Start-up creates the objects of ~250 modules
    and almost no garbage, yet the collector ran ~55 times over it (~15 ms of a ~230 ms start, issue 11);
    what start-up made is then frozen (gc.freeze: never scanned again, as it lives as long as the
    process), so later collections only look at what calls create."""
    import gc
    import threading

    def back_on(_round: object = None) -> None:
        if not gc.isenabled():
            gc.freeze()
            gc.enable()

    daemon.cache.on_round.insert(1, back_on)  # after SERVING
    if daemon.cache.current(timeout=0) is not None:  # the first round ended before the hook was added
        back_on()
    timer = threading.Timer(GC_OFF_AT_MOST, back_on)
    timer.daemon = True
    timer.start()


GC_OFF_AT_MOST = 10.0  # s: the collector is back on even if the first round never ends


def run(args: argparse.Namespace) -> int:
    import gc

    gc.disable()  # until the first probe round: see _collect_garbage_from_first_round
    try:
        return _run(args)
    finally:
        gc.enable()  # an error at start returns before the daemon could turn it back on


def _run(args: argparse.Namespace) -> int:
    from nodecompat.server import telemetry

    problem = check_args(args)
    if not problem:
        from nodecompat.clients.listen_check import listen_problem

        problem = listen_problem(args.listen)
    if problem:
        print(f"nodecompat serve: {problem}", file=sys.stderr)
        return exit_codes.ERROR
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.node_name or node_name_default()
    first_round = None
    if not telemetry.tracing_requested():  # traced, the first round's spans are the parent's to export
        # Before gRPC is imported: the first probe round runs in a child on the other core meanwhile
        from nodecompat.server.node.first_round import ForkedRound

        first_round = ForkedRound.start(args.host_root, args.probes.split(",") if args.probes else None, name,
                                        _sysctl_names(args), args.probe_timeout)
    try:
        return _serve(args, name, first_round)
    finally:
        if first_round is not None:
            first_round.cancel()  # an error before the daemon took the round: do not leave the child


def _serve(args: argparse.Namespace, name: str, first_round: ForkedRound | None) -> int:
    from nodecompat.server import telemetry
    from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
    from nodecompat.server.node.node_service import RegistryOptions
    from nodecompat.server.runtime.grpc_server import run_until_signal

    try:
        provider = telemetry.init_tracing("nodecompat-node")
    except ValueError as exc:
        print(f"nodecompat serve: tracing: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    policy = registry_policy(args)
    registry_auth = None
    if policy.patterns:  # registry credentials for ValidateImage by reference: the docker config's `auths`
        # (read only when --allowed-registries lets the daemon reach a registry at all)
        from nodecompat.oci.auth import RegistryAuth
        from nodecompat.oci.errors import RegistryError

        try:
            registry_auth = RegistryAuth.from_sources(ca_file=args.ca_file)
        except RegistryError as exc:
            print(f"nodecompat serve: registry credentials: {exc}", file=sys.stderr)
            return exit_codes.ERROR
    creds = None
    if args.tls_cert:
        from nodecompat.server import tls

        try:
            creds = tls.server_credentials(args.tls_cert, args.tls_key, args.tls_ca)
        except (tls.TlsConfigError, OSError) as exc:
            print(f"nodecompat serve: {exc}", file=sys.stderr)
            return exit_codes.ERROR
    config = DaemonConfig(
        listen=args.listen,
        host_root=args.host_root,
        node_name=name,
        refresh_interval=args.refresh_interval,
        min_refresh_interval=args.min_refresh_interval,
        probe_timeout=args.probe_timeout,
        probes=args.probes.split(",") if args.probes else None,
        hotplug=not args.no_hotplug,
        sysctl=_sysctl_names(args),
        registry=RegistryOptions(ca_file=args.ca_file, auth=registry_auth, policy=policy),
        server_credentials=creds,
        first_round=first_round,
        **runtime_config(args),  # type: ignore[arg-type]
    )
    try:
        daemon = NodeDaemon(config)
        port = daemon.start()
    except Exception as exc:
        print(f"nodecompat serve: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    host = args.listen.rpartition(":")[0]
    print(f"nodecompat: node {name} serving on {host}:{port}", file=sys.stderr, flush=True)
    _collect_garbage_from_first_round(daemon)
    daemon.warm_up_after_first_round()
    from nodecompat.oci.policy import describe

    logging.getLogger("nodecompat.serve").info("%s", describe(config.registry.policy))
    if args.register:
        from nodecompat.server.inventory.registration_auth import read_token_file
        from nodecompat.server.node.registration import LeaseKeeper

        labels = dict(kv.strip().split("=", 1) for kv in args.labels.split(",") if kv.strip())
        keeper = LeaseKeeper(
            args.register,
            name=name,
            address=args.advertise or f"{host}:{port}",
            labels=labels,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            token=read_token_file(args.registration_token_file) if args.registration_token_file else None,
            feature_state=(hub := daemon.watch_hub()).push_state,  # push model: heartbeats carry the state
        )
        hub.on_change.append(keeper.poke)  # ... and go out at once when the fingerprint changes
        keeper.start()
        daemon.on_stop.append(keeper.stop)
    run_until_signal(daemon.stop, daemon.wait)
    if provider is not None:
        provider.shutdown()
    return exit_codes.YES
