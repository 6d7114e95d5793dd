"""`nodecompat affinity (--image REF | --spec F) --aggregator ADDR [-o yaml|json]`: the nodeAffinity block
the webhook would add, for people who deploy with GitOps instead of a webhook.

Same placement as the webhook (nodecompat.admission.decide.placement): kubernetes.io/hostname In [fitting
nodes] up to --max-node-names, preferred terms per compatibility set weight; past it, the NFD labels of
`translate --to nodefeaturerule` with --nfd-labels. Exit 0 printed, 1 no node fits (why on stderr), 2 error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.registry_args import add_registry_args
from nodecompat.clients.tls_args import add_tls_client_args

HELP = "print the nodeAffinity that places a pod on the fleet's nodes fitting an image or spec (for GitOps)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("affinity", help=HELP, description=HELP + ". Exit 0 printed, 1 no node fits, 2 error.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", metavar="REF", help="image whose attached compatibility spec is used")
    src.add_argument("--spec", metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    p.add_argument("--aggregator", required=True, metavar="ADDR", help="the fleet aggregator's gRPC address")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format")
    p.add_argument(
        "--max-node-names",
        type=int,
        default=500,
        metavar="N",
        help="most node names in the hostname form (default %(default)s)",
    )
    p.add_argument(
        "--nfd-labels",
        action="store_true",
        help="past --max-node-names, use the labels of `translate --to nodefeaturerule --name NAME`",
    )
    p.add_argument(
        "--name", help="NAME given to translate (default: the image repository's last part or the spec file's name)"
    )
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="overall deadline (default %(default)s)")
    add_tls_client_args(p, "the aggregator")
    add_registry_args(p)
    p.set_defaults(func=run)


def _spec_text(args: argparse.Namespace) -> tuple[str, str, str, str]:
    """(spec text, name, image digest, artifact digest)."""
    from nodecompat.clients.cmd_translate import default_name
    from nodecompat.clients.input_files import read_text_limited
    from nodecompat.engine.limits import MAX_SPEC_BYTES

    if args.spec:
        return read_text_limited(args.spec, MAX_SPEC_BYTES, "spec"), default_name(args.spec), "", ""
    from nodecompat.clients.registry_args import registry_auth_from_args
    from nodecompat.oci.discovery import fetch_compat_spec
    from nodecompat.translate.common import dns_name

    fetched = fetch_compat_spec(
        args.image,
        platform=args.platform,
        plain_http=args.plain_http,
        auth=registry_auth_from_args(args),
        ca_file=args.ca_file,
        timeout=args.timeout,
    )
    name = dns_name(args.image.split("@")[0].rsplit("/", 1)[-1].split(":")[0], "image")
    return fetched.text, name, fetched.image_digest, fetched.artifact_digest


def run(args: argparse.Namespace) -> int:
    from nodecompat.admission.decide import ImageAnswer, NodeAnswer, Policy, node_affinity, placement
    from nodecompat.clients.fleet_client import FleetCallError, FleetClient
    from nodecompat.clients.input_files import InputError
    from nodecompat.clients.tls_args import channel_credentials_from_args
    from nodecompat.engine.spec import SpecError, parse_spec
    from nodecompat.oci.errors import RegistryError
    from nodecompat.server.tls import TlsConfigError
    from nodecompat.translate.common import dump_yaml

    try:
        text, name, image_digest, artifact_digest = _spec_text(args)
        spec = parse_spec(text)
        with FleetClient(args.aggregator, credentials=channel_credentials_from_args(args)) as client:
            answer = client.validate(spec_text=text, timeout=args.timeout)
    except (InputError, RegistryError, TlsConfigError) as exc:
        print(f"nodecompat affinity: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    except SpecError as exc:
        print(f"nodecompat affinity: invalid spec: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    except FleetCallError as exc:
        print(f"nodecompat affinity: aggregator {args.aggregator}: {exc.code}: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    image = ImageAnswer(
        args.image or args.spec,
        "fit",
        image_digest=image_digest,
        artifact_digest=artifact_digest,
        spec=spec,
        spec_name=args.name or name,
        nodes=[NodeAnswer(n.name, n.compatible, n.score, n.status or "OK", n.reasons) for n in answer.nodes],
        why_not=answer.summary.why_not,
    )
    fitting = image.fitting()
    if not fitting:
        from nodecompat.admission.decide import why_not_line

        print(f"nodecompat affinity: {why_not_line(image)}", file=sys.stderr)
        return exit_codes.NO
    placed = placement([image], fitting, Policy(max_node_names=args.max_node_names, nfd_labels=args.nfd_labels))
    if placed is None:
        print(
            f"nodecompat affinity: {len(fitting)} nodes fit, more than --max-node-names {args.max_node_names}; "
            "run NFD with `nodecompat translate --to nodefeaturerule` and give --nfd-labels",
            file=sys.stderr,
        )
        return exit_codes.ERROR
    block = {"affinity": node_affinity(placed[0], placed[1])}
    sys.stdout.write(json.dumps(block, indent=2) + "\n" if args.output == "json" else dump_yaml(block))
    print(f"# {len(fitting)} of {len(image.nodes)} nodes fit ({placed[2]} form)", file=sys.stderr)
    return exit_codes.YES
