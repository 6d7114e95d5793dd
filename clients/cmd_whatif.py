"""`nodecompat what-if`: every image/spec against every features snapshot (a planned host) as a matrix.

    nodecompat what-if --image reg/app:v1 --spec gpu.yaml --features rhel10.json --features old.json

    nodecompat what-if --spec app.yaml --features rhel10.json --aggregator agg:7070 --selector zone=a \
        --aggregator other:7070

Rows are the --image/--spec arguments in the order given, columns the hosts of every target in the order
given: each --features snapshot (named by its file name without .json) and the nodes of each --aggregator
(from its inventory, through its WhatIf RPC), a --selector applying to the --aggregator before it (with a
single --aggregator, every --selector applies to it). A fleet node whose name was met before (in an
earlier target) is shown as ADDR/NAME. Snapshots are checked here (images fetched here); an aggregator
fetches images itself.
Exit 0 when every image fits on some node, 1 when some image fits on none, 2 on error (a spec that
cannot be fetched or parsed is an error: the question was not answered).
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


class _Target(argparse.Action):
    """--features and --aggregator append a target to one ordered list; --selector attaches to the last
    --aggregator (or waits for one when none was given yet)."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        targets = list(getattr(ns, "targets", None) or [])
        if self.const == "selector":
            aggs = [t for t in targets if t[0] == "aggregator"]
            if aggs:
                aggs[-1][2].append(values)
            else:
                ns.early_selectors = [*(getattr(ns, "early_selectors", None) or []), values]
        else:
            targets.append((self.const, values, []))
        ns.targets = targets


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
    p.add_argument("--features", action=_Target, const="features", dest="targets", metavar="SNAPSHOT.json",
                   help="features snapshot of a planned host, as `nodecompat features -o json` writes (repeatable)")
    p.add_argument("--aggregator", action=_Target, const="aggregator", dest="targets", metavar="HOST:PORT",
                   help="the fleet's nodes, from this aggregator's live inventory (repeatable; may be mixed with "
                   "--features)")
    p.add_argument("--selector", action=_Target, const="selector", dest="targets", metavar="K=V",
                   help="only nodes with this label, of the --aggregator before it (repeatable, or K=V,K2=V2)")
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
    p.set_defaults(func=run, sources=None, targets=None, early_selectors=None)


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


def _nodes(paths: list[str]) -> list[Any]:
    from nodecompat.clients.cmd_validate import CommandError as ValidateError
    from nodecompat.clients.cmd_validate import load_snapshot
    from nodecompat.fleet.whatif import Node

    nodes = []
    seen: set[str] = set()
    for path in paths:
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
        targets = list(args.targets or [])
        if not targets:
            raise CommandError("give --features SNAPSHOT.json or --aggregator HOST:PORT (each repeatable, may be "
                               "mixed): the hosts to check against")
        aggregators = [t for t in targets if t[0] == "aggregator"]
        if args.early_selectors:
            if len(aggregators) != 1:
                raise CommandError("--selector applies to the --aggregator before it; give it after that "
                                   "--aggregator" if aggregators else "--selector applies to --aggregator only")
            aggregators[0][2].extend(args.early_selectors)
        if len(args.sources) > MAX_WHATIF_SPECS:
            raise CommandError(f"at most {MAX_WHATIF_SPECS} images/specs per call, got {len(args.sources)}")
        rows = _rows(args, targets, matrix)
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


def _rows(args: argparse.Namespace, targets: list[tuple[str, str, list[str]]], matrix: Any) -> list[Any]:
    """The rows over every target in order: consecutive --features snapshots are evaluated here as one
    group, each --aggregator answers through its WhatIf RPC; a row's cells are the targets' cells side by
    side, its fits their sum, its error any target's error (joined)."""
    from nodecompat.fleet.whatif import Row

    parts: list[tuple[str, list[Any]]] = []  # (target label, rows)
    specs: list[tuple[str, Any]] | None = None
    i = 0
    while i < len(targets):
        kind, value, selector = targets[i]
        if kind == "features":
            paths = []
            while i < len(targets) and targets[i][0] == "features":
                paths.append(targets[i][1])
                i += 1
            if specs is None:
                specs = _specs(args)
            parts.append(("", matrix(specs, _nodes(paths), _tags(args))))
            continue
        parts.append((value, _from_aggregator(args, value, selector)))
        i += 1
    rows = [Row(name=value) for _, value in args.sources]
    seen: set[str] = set()
    for label, part in parts:
        for row, got in zip(rows, part, strict=True):
            row.image_digest = row.image_digest or got.image_digest
            row.artifact_digest = row.artifact_digest or got.artifact_digest
            if got.error:
                where = f"{label}: " if label and len(parts) > 1 else ""
                row.error = f"{row.error}; {where}{got.error}" if row.error else f"{where}{got.error}"
            row.cells.extend(got.cells)
            row.fits += got.fits
        names = {c.node_name for r in part for c in r.cells}
        clash = names & seen
        if clash and label:
            for r in part:
                for c in r.cells:
                    if c.node_name in clash:
                        c.node_name = f"{label}/{c.node_name}"
        seen |= {c.node_name for r in part for c in r.cells}
    return rows


def _from_aggregator(args: argparse.Namespace, address: str, selector: list[str]) -> list[Any]:
    """The matrix from one aggregator's WhatIf RPC (images are fetched by the aggregator)."""
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
        req.selector.update(parse_selector(selector))
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
        with FleetClient(address, credentials=channel_credentials_from_args(args)) as client:
            resp = client.stub.WhatIf(req, timeout=args.timeout + 5)
    except TlsConfigError as exc:
        raise CommandError(str(exc)) from None
    except grpc.RpcError as exc:
        raise CommandError(f"{address}: {exc.code().name}: {exc.details()}") from None
    return [from_message(r, Row) for r in resp.rows]
