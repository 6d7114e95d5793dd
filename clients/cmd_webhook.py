"""`nodecompat webhook`: the Kubernetes admission webhook (HTTPS /mutate, /validate, /healthz).

Exit 2 on a configuration error (named by flag); otherwise serves until SIGTERM/SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.cmd_serve import add_registry_policy_flag, registry_policy
from nodecompat.clients.registry_args import add_credential_args, registry_auth_from_args

HELP = "run the Kubernetes admission webhook that places pods only on nodes that fit their images"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "webhook",
        help=HELP,
        description="Serve admission.k8s.io/v1 AdmissionReviews for Pods over HTTPS: POST /mutate adds "
        "nodeAffinity admitting only the nodes that fit every image of the pod (kubernetes.io/hostname In "
        "[...], or the NFD labels of `translate --to nodefeaturerule` with --nfd-labels), POST /validate denies "
        'a pod no node can run, GET /healthz. Pods annotated nodecompat.io/skip: "true" pass unchanged.',
    )
    p.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT", help="HTTPS address (default %(default)s)")
    p.add_argument("--tls-cert", required=True, metavar="PEM", help="serving certificate (chain) of the webhook")
    p.add_argument("--tls-key", required=True, metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--tls-reload-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="look at --tls-cert/--tls-key at most every S seconds (on new connections) and serve a renewed "
        "pair without a restart; a pair that does not load is logged and the previous one kept (default %(default)s)",
    )
    p.add_argument("--aggregator", required=True, metavar="ADDR", help="the fleet aggregator's gRPC address")
    g = p.add_argument_group("aggregator TLS")
    g.add_argument("--aggregator-tls-ca", metavar="PEM", help="CA to verify the aggregator with; enables TLS")
    g.add_argument("--aggregator-tls-cert", metavar="PEM", help="client certificate for mutual TLS")
    g.add_argument("--aggregator-tls-key", metavar="PEM", help="private key of --aggregator-tls-cert")
    add_registry_policy_flag(p, "the webhook")
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="reach registries over HTTP (the allow-list pattern must start with http://)",
    )
    p.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify registries")
    add_credential_args(p.add_argument_group("registry credentials (sent over HTTPS only)"))
    p.add_argument(
        "--failure-policy",
        choices=("fail", "ignore"),
        default="fail",
        help="when a registry or the aggregator cannot answer in time: deny (fail) or admit unchanged "
        "with a warning (ignore); match the webhook configuration's failurePolicy (default %(default)s)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=8.0,
        metavar="S",
        help="answer every review within S seconds (default %(default)s; under the API server's 10 s)",
    )
    p.add_argument(
        "--max-node-names",
        type=int,
        default=500,
        metavar="N",
        help="most node names in the hostname affinity; past it, --nfd-labels or the failure policy",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=32,
        metavar="N",
        help="reviews handled at once; past it, HTTP 503 at once and the webhook configuration's "
        "failurePolicy applies (default %(default)s)",
    )
    p.add_argument("--deny-when-no-fit", action="store_true", help="/mutate also denies a pod no node can run")
    p.add_argument(
        "--nfd-labels",
        action="store_true",
        help="the cluster runs NFD with `nodecompat translate --to nodefeaturerule --name REPO` rules "
        "(REPO: the image repository's last path part): place by those labels past --max-node-names",
    )
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from nodecompat.hostport import split_address
    from nodecompat.server.tls import ClientTls
    from nodecompat.server.webhook.webhook import WebhookConfig
    from nodecompat.server.webhook.webhook_tls import server_ssl_context

    if not 0.5 <= args.deadline <= 30:
        raise ValueError("--deadline must be between 0.5 and 30 seconds (the API server waits at most 30)")
    if not 1 <= args.max_concurrent_requests <= 10_000:
        raise ValueError("--max-concurrent-requests must be between 1 and 10000")
    if not 0 <= args.tls_reload_interval <= 86_400:
        raise ValueError("--tls-reload-interval must be between 0 and 86400 seconds")
    if args.max_node_names < 1:
        raise ValueError("--max-node-names must be at least 1")
    host, port = split_address(args.listen)
    server_ssl_context(args.tls_cert, args.tls_key)  # a bad file is a flag error now, not at the first request
    creds = ClientTls(args.aggregator_tls_ca, args.aggregator_tls_cert, args.aggregator_tls_key).credentials()
    return WebhookConfig(
        host,
        port,
        args.tls_cert,
        args.tls_key,
        args.aggregator,
        creds,
        registry_policy(args),
        args.plain_http,
        args.ca_file,
        args.failure_policy,
        args.deadline,
        args.max_node_names,
        args.deny_when_no_fit,
        args.nfd_labels,
        max_concurrent_requests=args.max_concurrent_requests,
        registry_auth=registry_auth_from_args(args),
        tls_reload_interval=args.tls_reload_interval,
    )


def _tune_gc() -> None:
    """Once serving: start-up objects frozen out of the collector's sight and the young generation collected
    every 10,000 allocations (server/runtime/gc_tuning.py: each review allocates tens of thousands of short-lived
    objects — two grouped ValidateFleet answers of 1,000 nodes, the JSONPatch — so with the defaults a full
    collection over every start-up object landed inside some reviews: bench_webhook warm p99 55-63 ms with
    the defaults, 31-35 ms tuned, p50 unchanged)."""
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    tune_for_serving()


def run(args: argparse.Namespace) -> int:
    import logging
    import ssl

    from nodecompat.oci.errors import InvalidArgumentError
    from nodecompat.oci.policy import describe
    from nodecompat.server.tls import TlsConfigError
    from nodecompat.server.webhook.webhook import serve

    try:
        config = _config(args)
    except (ValueError, TlsConfigError, InvalidArgumentError) as exc:
        print(f"nodecompat webhook: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    except (OSError, ssl.SSLError) as exc:
        print(f"nodecompat webhook: --tls-cert/--tls-key: cannot load: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(serve(config, ready, stop))
        await asyncio.wait([task, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            print(
                f"nodecompat webhook: serving https://{args.listen} (aggregator {args.aggregator}, failure policy "
                f"{args.failure_policy}, deadline {args.deadline:g} s; {describe(config.policy)}; registry "
                f"credentials: {_credentials(config.registry_auth)})",
                file=sys.stderr,
                flush=True,
            )
            _tune_gc()
        await task

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"nodecompat webhook: --listen {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return exit_codes.ERROR
    return exit_codes.YES


def _credentials(auth: Any) -> str:
    """What the registry credentials are, never what they hold (for the start-up line)."""
    if auth.token:
        return "bearer token from stdin"
    if auth.username:
        return f"user {auth.username!r} from flags"
    if auth.current_docker_auths():
        return f"docker config for {len(auth.current_docker_auths())} registries"
    return "none (anonymous)"
