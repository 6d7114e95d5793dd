"""`nodecompat validate`: evaluate a spec against this machine, a features snapshot or a node daemon.

Structured as obtain_spec -> obtain_verdict -> render so the integrator can add `--image REF`
(fetching the spec from a registry) in obtain_spec without touching the rest.
Exit status: 0 compatible, 1 not compatible, 2 error (message on stderr, nothing on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nodecompat.clients.render import render_table

from nodecompat.features import Features
from nodecompat.spec import SpecError, parse_spec
from nodecompat.verdict import Verdict

EXIT_OK, EXIT_NOT_COMPATIBLE, EXIT_ERROR = 0, 1, 2


class CommandError(Exception):
    """A user-facing error: printed on stderr, exit 2."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate",
        help="evaluate an image compatibility spec against a node",
        description="Evaluate an NFD image compatibility spec (v1alpha1) against this machine, a features "
        "snapshot, or a nodecompat daemon. Exit 0 compatible, 1 not compatible, 2 error.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    # INTEGRATOR: add `--image REF` to this group and handle it in obtain_spec().
    where = p.add_mutually_exclusive_group()
    where.add_argument("--features", metavar="SNAPSHOT.json", help="NFD features JSON instead of probing")
    where.add_argument("--node", metavar="HOST:PORT", help="ask a nodecompat daemon to evaluate")
    p.add_argument(
        "--tags",
        default=None,
        help="only evaluate sets with these tags (comma-separated, repeatable)",
        action="append",
    )
    p.add_argument("-o", "--output", choices=("table", "json", "nfd-json"), default="table")
    p.add_argument(
        "--nfd-compat",
        action="store_true",
        help="accept what NFD accepts (unknown fields, lazily-checked expressions) with warnings",
    )
    p.add_argument("--host-root", default="/", help="host file tree to probe (default /)")
    p.set_defaults(func=run)


def _tags(args: argparse.Namespace) -> list[str]:
    raw = args.tags if isinstance(args.tags, list) else [args.tags]
    return [t.strip() for chunk in raw if chunk for t in chunk.split(",") if t.strip()]


def obtain_spec(args: argparse.Namespace) -> str:
    """The spec text. (The integrator adds --image here.)"""
    try:
        if args.spec == "-":
            return sys.stdin.read()
        return Path(args.spec).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read spec {args.spec}: {exc}") from None


def load_snapshot(path: str) -> tuple[Features, dict[str, str]]:
    """NFD's features JSON; a `probes` list with failed statuses makes their features unknown."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read features snapshot {path}: {exc}") from None
    try:
        features = Features.from_nfd(data)
    except ValueError as exc:
        raise CommandError(f"features snapshot {path}: {exc}") from None
    unknown: dict[str, str] = {}
    probes = data.get("probes") if isinstance(data, dict) else None
    for st in probes or []:
        if isinstance(st, dict) and not st.get("ok", True):
            for name in st.get("features") or []:
                unknown[str(name)] = f"probe {st.get('name', '?')} failed: {st.get('error', '')}"
    return features, unknown


def obtain_verdict(args: argparse.Namespace, text: str) -> Verdict:
    tags = _tags(args)
    if args.node:
        try:
            from nodecompat.clients.node_client import NodeClient
        except ImportError as exc:
            raise CommandError(f"--node is not available in this build: {exc}") from None
        try:
            return NodeClient(args.node).validate_spec(text, tags=tags, nfd_compat=args.nfd_compat)
        except Exception as exc:  # the client maps gRPC errors; anything here is the user's answer
            raise CommandError(f"node {args.node}: {exc}") from None
    try:
        spec = parse_spec(text, nfd_compat=args.nfd_compat)
    except SpecError as exc:
        raise CommandError("invalid spec:\n  " + "\n  ".join(exc.problems)) from None
    from nodecompat.evaluate import evaluate

    if args.features:
        features, unknown = load_snapshot(args.features)
    else:
        from nodecompat.probes.runner import probe_once

        from nodecompat.hostroot import HostRoot

        rnd = probe_once(HostRoot(Path(args.host_root)))
        features, unknown = rnd.features, rnd.unknown_features()
    verdict = evaluate(spec, features, tags=tags, unknown=unknown)
    verdict.warnings = [*spec.warnings, *verdict.warnings]
    return verdict


def render(args: argparse.Namespace, verdict: Verdict) -> str:
    if args.output == "json":
        return json.dumps(verdict.to_dict(), indent=2) + "\n"
    if args.output == "nfd-json":
        if not verdict.nfd_json:
            stop = next(
                (w for w in verdict.warnings if w.startswith("nfd compat validate-node would stop")), ""
            )
            raise CommandError(stop or "no nfd-json output")
        return verdict.nfd_json
    return render_table(verdict, colour=sys.stdout.isatty())


def run(args: argparse.Namespace) -> int:
    try:
        text = obtain_spec(args)
        verdict = obtain_verdict(args, text)
        out = render(args, verdict)
    except CommandError as exc:
        print(f"nodecompat validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(out)
    sys.stdout.flush()
    return EXIT_OK if verdict.compatible else EXIT_NOT_COMPATIBLE
