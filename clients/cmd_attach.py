"""`nodecompat attach`: push a compatibility spec as an OCI artifact referring to an image (what
NFD's docs do with `oras attach`, which is not installable everywhere), or list what is attached.

The spec is linted first so a broken spec never reaches a registry where every node would fetch it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import InputError, locate, read_text_limited
from nodecompat.clients.registry_args import add_registry_args, registry_auth_from_args
from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.engine.lint import lint_spec
from nodecompat.oci.attach import attach_spec, list_artifacts
from nodecompat.oci.errors import RegistryError

EXIT_OK = exit_codes.YES
EXIT_ERROR = exit_codes.ERROR


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "attach",
        help="attach a compatibility spec to an image in a registry, or list attached specs",
        description="Push SPEC as an OCI artifact (artifactType "
                    "application/vnd.nfd.image-compatibility.v1alpha1) whose subject is the image, "
                    "or with --list show the compatibility artifacts attached to it.",
    )
    parser.add_argument("--image", required=True, metavar="REF", help="registry/repo[:tag|@digest]")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--spec", metavar="FILE", help="compatibility spec (YAML or JSON) to attach")
    what.add_argument("--list", action="store_true", help="list attached compatibility artifacts")
    parser.add_argument("--created", default=None, metavar="RFC3339",
                        help="org.opencontainers.image.created of the artifact (default: now)")
    parser.add_argument("--timeout", type=float, default=60.0, help="overall seconds (default 60)")
    parser.add_argument("--json", action="store_true", help="with --list: print JSON")
    add_registry_args(parser)
    parser.set_defaults(func=run)


def _err(message: str) -> int:
    print(f"nodecompat attach: {message}", file=sys.stderr)
    return EXIT_ERROR


def spec_problems(text: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) from the linter; only errors stop an attach."""
    errors: list[str] = []
    warnings: list[str] = []
    for problem in lint_spec(text):
        line = f"{problem.path}: {problem.message}" if problem.path else str(problem.message)
        (errors if str(problem.severity).lower() == "error" else warnings).append(line)
    return errors, warnings


def run(args: argparse.Namespace) -> int:
    try:
        auth = registry_auth_from_args(args)
    except RegistryError as exc:
        return _err(str(exc))
    common = {"plain_http": args.plain_http, "auth": auth, "ca_file": args.ca_file,
              "timeout": args.timeout, "platform": args.platform}
    if args.list:
        try:
            artifacts = list_artifacts(args.image, **common)
        except RegistryError as exc:
            return _err(f"{exc} [{exc.code}]")
        if args.json:
            print(json.dumps([a.__dict__ for a in artifacts], indent=2))
        else:
            print(f"{'DIGEST':71}  {'CREATED':25}  SIZE")
            for art in artifacts:
                print(f"{art.digest:71}  {art.created or '-':25}  {art.size}")
        return EXIT_OK
    try:
        text = read_text_limited(args.spec, MAX_SPEC_BYTES, "spec")
    except InputError as exc:
        return _err(str(exc))
    errors, warnings = spec_problems(text)
    for warning in warnings:
        print(f"{args.spec}: warning: {warning}", file=sys.stderr)
    if errors:
        for problem in errors:
            print(locate(problem, args.spec), file=sys.stderr)
        return _err(f"refusing to attach {args.spec}: {len(errors)} problem(s)")
    try:
        result = attach_spec(args.image, text, created=args.created, **common)
    except RegistryError as exc:
        return _err(f"{exc} [{exc.code}]")
    print(f"attached {result.artifact_digest} to {args.image} (subject {result.subject_digest})")
    if result.referrers_tag_updated:
        print("registry has no referrers API: updated the referrers tag index "
              f"{result.subject_digest.replace(':', '-')}")
    return EXIT_OK
