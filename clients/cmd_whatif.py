"""`nodecompat what-if`: every image/spec against every features snapshot (a planned host) as a matrix.

    nodecompat what-if --image reg/app:v1 --spec gpu.yaml --features rhel10.json --features old.json

Rows are the --image/--spec arguments in the order given, columns the --features snapshots (named by
their file name without .json). Exit 0 when every image fits on some node, 1 when some image fits on
none, 2 on error (a spec that cannot be fetched or parsed is an error: the question was not answered).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import InputError, locate, read_text_limited
from nodecompat.clients.registry_args import add_registry_args, registry_auth_from_args
from nodecompat.clients.tls_args import add_tls_client_args, channel_credentials_from_args
from nodecompat.engine.limits import MAX_SPEC_BYTES


class _Source(argparse.Action):
    """--image and --spec append ("image"|"spec", value) to one list, keeping their order."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        items = list(getattr(ns, "sources", None) or [])
        items.append((self.const, values))
        ns.sources = items


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "what-if",
        help="check many images/specs against planned hosts (feature snapshots) before a migration",
        description="Evaluate every --image/--spec against every --features snapshot and print the matrix "
        "(image x node: compatible or not, with the first reason). Exit 0 when every image fits somewhere, "
        "1 when some image fits nowhere, 2 on error.",
    )
    p.add_argument("--image", action=_Source, const="image", dest="sources", metavar="REF",
                   help="image whose compatibility artifact to check (repeatable)")
    p.add_argument("--spec", action=_Source, const="spec", dest="sources", metavar="FILE",
                   help="spec file, YAML or JSON (repeatable)")
    p.add_argument("--features", action="append", default=[], metavar="SNAPSHOT.json",
                   help="features snapshot of a planned host, as `nodecompat features -o json` writes (repeatable)")
    p.add_argument("--aggregator", metavar="HOST:PORT",
                   help="check against the fleet's nodes, from the aggregator's live inventory, instead of snapshots")
    p.add_argument("--selector", action="append", default=[], metavar="K=V",
                   help="with --aggregator: only nodes with this label (repeatable, or K=V,K2=V2)")
    p.add_argument("--tags", action="append", default=[], help="only compatibility sets with these tags")
    p.add_argument(
        "--nfd-compat",
        action="store_true",
        help="NFD mode: what NFD accepts, evaluated against NFD's view (see `validate --nfd-compat`)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for each registry fetch (default 60)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    add_registry_args(p)
    add_tls_client_args(p, "the --aggregator")
    p.set_defaults(func=run, sources=None)


class CommandError(Exception):
    pass


def _specs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    from nodecompat.engine.spec import SpecError, parse_spec

    out: list[tuple[str, Any]] = []
    auth = None
    for kind, value in args.sources:
        if kind == "spec":
            try:
                text = read_text_limited(value, MAX_SPEC_BYTES, "spec")
            except InputError as exc:
                raise CommandError(str(exc)) from None
            name = value
        else:
            from nodecompat.oci.discovery import fetch_compat_spec
            from nodecompat.oci.errors import RegistryError

            if auth is None:
                auth = registry_auth_from_args(args)
            try:
                text = fetch_compat_spec(
                    value, platform=args.platform, plain_http=args.plain_http, auth=auth,
                    ca_file=args.ca_file, timeout=args.timeout,
                ).text
            except RegistryError as exc:
                raise CommandError(f"{value}: {exc.code}: {exc}") from None
            name = value
        try:
            out.append((name, parse_spec(text, nfd_compat=args.nfd_compat)))
        except SpecError as exc:
            where = "\n  ".join(locate(p, name) for p in exc.problems)  # FILE:LINE:COL, not <unicode string>
            raise CommandError(f"{name}: invalid spec:\n  {where}") from None
    return out


def _nodes(args: argparse.Namespace) -> list[Any]:
    from nodecompat.clients.cmd_validate import CommandError as ValidateError
    from nodecompat.clients.cmd_validate import load_snapshot
    from nodecompat.fleet.whatif import Node

    nodes = []
    seen: set[str] = set()
    for path in args.features:
        try:
            features, unknown = load_snapshot(path)
        except ValidateError as exc:
            raise CommandError(str(exc)) from None
        name = os.path.basename(path)
        name = name[:-5] if name.endswith(".json") else name
        if name in seen:
            name = path
        seen.add(name)
        nodes.append(Node(name, features, unknown))
    return nodes


def _tags(args: argparse.Namespace) -> list[str]:
    return [t.strip() for chunk in args.tags for t in chunk.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    from nodecompat.fleet.whatif import MAX_WHATIF_SPECS, all_fit, matrix, render_matrix

    try:
        if not args.sources:
            raise CommandError("give at least one --image REF or --spec FILE")
        if not args.features and not args.aggregator:
            raise CommandError("give --features SNAPSHOT.json (repeatable) or --aggregator HOST:PORT: the hosts "
                               "to check against")
        if args.features and args.aggregator:
            raise CommandError("give either --features snapshots or --aggregator, not both")
        if args.selector and not args.aggregator:
            raise CommandError("--selector applies to --aggregator only")
        if len(args.sources) > MAX_WHATIF_SPECS:
            raise CommandError(f"at most {MAX_WHATIF_SPECS} images/specs per call, got {len(args.sources)}")
        rows = _from_aggregator(args) if args.aggregator else matrix(_specs(args), _nodes(args), _tags(args))
    except CommandError as exc:
        print(f"nodecompat what-if: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    if args.output == "json":
        doc = {"rows": [asdict(r) for r in rows], "all_fit": all_fit(rows)}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(render_matrix(rows))
    sys.stdout.flush()
    if any(r.error for r in rows):
        print("nodecompat what-if: " + "; ".join(f"{r.name}: {r.error}" for r in rows if r.error), file=sys.stderr)
        return exit_codes.ERROR
    return exit_codes.YES if all_fit(rows) else exit_codes.NO


def _from_aggregator(args: argparse.Namespace) -> list[Any]:
    """The matrix from the aggregator's WhatIf RPC (images are fetched by the aggregator)."""
    import grpc

    from nodecompat.clients.cmd_fleet import parse_selector
    from nodecompat.clients.fleet_client import FleetClient
    from nodecompat.fleet.whatif import Row
    from nodecompat.server.tls import TlsConfigError
    from nodecompat.v1 import inventory_pb2
    from nodecompat.wire import from_message

    req = inventory_pb2.WhatIfRequest(tags=_tags(args), platform=args.platform or "", plain_http=args.plain_http,
                                      nfd_compat=args.nfd_compat, timeout_seconds=args.timeout)
    try:
        req.selector.update(parse_selector(args.selector))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    for kind, value in args.sources:
        if kind == "image":
            req.specs.add(image=value, name=value)
        else:
            try:
                req.specs.add(spec=read_text_limited(value, MAX_SPEC_BYTES, "spec"), name=value)
            except InputError as exc:
                raise CommandError(str(exc)) from None
    try:
        with FleetClient(args.aggregator, credentials=channel_credentials_from_args(args)) as client:
            resp = client.stub.WhatIf(req, timeout=args.timeout + 5)
    except TlsConfigError as exc:
        raise CommandError(str(exc)) from None
    except grpc.RpcError as exc:
        raise CommandError(f"{args.aggregator}: {exc.code().name}: {exc.details()}") from None
    return [from_message(r, Row) for r in resp.rows]
