"""`nodecompat translate --spec F --to nodefeaturerule|nodefeaturegroup|dra`: the spec as Kubernetes objects.

YAML documents on stdout (apply them with kubectl); what could not be translated, and why, as `#` comments
on stderr and, for dra, also at the top of stdout. Exit 0 translated, 2 the spec cannot be read or
translated (message on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import InputError, read_bytes_limited
from nodecompat.engine.limits import MAX_SPEC_BYTES

TARGETS = ("nodefeaturerule", "nodefeaturegroup", "dra")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "translate",
        help="translate a spec into an NFD NodeFeatureRule/NodeFeatureGroup or DRA DeviceClass+ResourceClaimTemplate",
        description="Print Kubernetes objects equivalent to an image compatibility spec. nodefeaturerule: NFD "
        "labels nodes fitting each set nodecompat.io/<name>.<set>=true (the nodeAffinity on them is printed "
        "as a comment; nfd-master needs extraLabelNs: [nodecompat.io]); nodefeaturegroup: one NFD "
        "NodeFeatureGroup per set; dra: resource.k8s.io/v1 DeviceClass and ResourceClaimTemplate for the "
        "device rules, every expression without a DRA equivalent listed with why. Exit 0 done, 2 error.",
    )
    p.add_argument("--spec", required=True, metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    p.add_argument("--to", required=True, choices=TARGETS, help="what to produce")
    p.add_argument("--name", help="name used in labels and object names (default: the spec file's name)")
    p.set_defaults(func=run)


def default_name(path: str) -> str:
    from nodecompat.translate.common import dns_name

    stem = os.path.splitext(os.path.basename(path))[0] if path != "-" else "spec"
    return dns_name(stem, "spec")[:40].strip("-") or "spec"


def run(args: argparse.Namespace) -> int:
    from nodecompat.engine.spec import SpecError, parse_spec
    from nodecompat.translate import dra, nfd
    from nodecompat.translate.common import TranslateError, dns_name, dump_yaml

    try:
        data = read_bytes_limited(args.spec, MAX_SPEC_BYTES, "spec")
        spec = parse_spec(data)
    except InputError as exc:
        print(f"nodecompat translate: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    except SpecError as exc:
        print(f"nodecompat translate: {args.spec}: invalid spec: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    name = dns_name(args.name, "spec")[:40].strip("-") if args.name else default_name(args.spec)
    try:
        if args.to == "nodefeaturerule":
            rule = nfd.node_feature_rule(spec, name)
            affinity = dump_yaml(nfd.label_affinity(spec, name))
            sys.stdout.write(dump_yaml(rule))
            sys.stdout.write("# Pods select the labelled nodes with (pod spec.affinity):\n")
            sys.stdout.write("".join(f"#   {line}\n" for line in affinity.splitlines()))
        elif args.to == "nodefeaturegroup":
            sys.stdout.write(dump_yaml(nfd.node_feature_groups(spec, name), many=True))
        else:
            out = dra.translate_dra(spec, name)
            for u in out.untranslated:
                line = f"# not translated: {u.where}: {u.what}: {u.why}"
                print(line)
                print(line, file=sys.stderr)
            sys.stdout.write(dump_yaml(out.objects, many=True))
    except TranslateError as exc:
        print(f"nodecompat translate: {args.spec}: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    return exit_codes.YES
