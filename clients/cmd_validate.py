"""`nodecompat validate`: evaluate a spec against this machine, a features snapshot or a node daemon.

Structured as obtain_spec (a file, stdin, or the image's artifact in a registry) -> obtain_verdict
(locally, or by a daemon; with --node and --image and no credentials of our own, the daemon fetches
the artifact itself, so its cache and its registry access are what is exercised) -> render.
Exit status: 0 compatible, 1 not compatible, 2 error (message on stderr, nothing on stdout).

Modes. Default: every fact nodecompat has, its additions included (pci.device address/driver/
numa_node, gpu.*, memory.size ...). NFD mode (--nfd-compat, implied by -o nfd-json): NFD's tolerance
when parsing and NFD's view when evaluating, exactly the features and attributes NFD publishes, so
the answer is `nfd compat validate-node`'s byte for byte. In both modes a name no probe provides is
treated as absent, as NFD does (the verdict's outcome is NFD's), and the verdict says so apart from
"this node lacks it": FactStatus NOT_PROVIDED, a did-you-mean, and the `unseen_names` list.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import InputError, locate, read_text_limited
from nodecompat.clients.registry_args import add_registry_args, registry_auth_from_args
from nodecompat.clients.render import render_table
from nodecompat.clients.tls_args import (
    add_tls_client_args,
    channel_credentials_from_args,
    tls_flags_given,
)
from nodecompat.engine.limits import MAX_SNAPSHOT_BYTES, MAX_SPEC_BYTES
from nodecompat.engine.spec import SpecError, parse_spec
from nodecompat.engine.verdict import Verdict
from nodecompat.features import Features
from nodecompat.utf8 import utf8_json

EXIT_OK, EXIT_NOT_COMPATIBLE, EXIT_ERROR = exit_codes.YES, exit_codes.NO, exit_codes.ERROR


class CommandError(Exception):
    """A user-facing error: printed on stderr, exit 2."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "validate",
        help="evaluate an image compatibility spec against a node",
        description="Evaluate an NFD image compatibility spec (v1alpha1) against this machine, a features "
        "snapshot, or a nodecompat daemon. Exit 0 compatible, 1 not compatible, 2 error. "
        "A feature or attribute no probe provides counts as absent, as in NFD (the verdict is NFD's in "
        "every mode), but is reported apart from what this node lacks: 'no probe provides `kernel.versoin` "
        "— did you mean `kernel.version`?' in the table, fact NOT_PROVIDED and `unseen_names` in -o json.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    src.add_argument("--image", metavar="REF", help="registry/repo[:tag|@digest] carrying the spec artifact")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--features", metavar="SNAPSHOT.json", help="NFD features JSON instead of probing")
    where.add_argument("--node", metavar="HOST:PORT", help="ask a nodecompat daemon to evaluate")
    p.add_argument(
        "--tags",
        default=None,
        help="only evaluate sets with these tags (comma-separated, repeatable)",
        action="append",
    )
    p.add_argument(
        "-o", "--output", choices=("table", "json", "nfd-json"), default="table",
        help="table (default), json (the whole verdict), or nfd-json (exactly what `nfd compat "
        "validate-node --output-json` prints; implies --nfd-compat)",
    )
    p.add_argument(
        "--nfd-compat",
        action="store_true",
        help="NFD mode: accept what NFD accepts (unknown fields, lazily-checked expressions) with warnings, "
        "and evaluate against NFD's view: exactly the features and attributes NFD publishes, nodecompat's "
        "additions (pci.device address/driver/numa_node, hugepage totals, gpu.*, memory.size ...) hidden",
    )
    p.add_argument("--host-root", default="/", help="host file tree to probe (default /)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for the registry/daemon (default 60)")
    add_registry_args(p)
    add_tls_client_args(p, "the --node daemon")
    p.set_defaults(func=run)


def _tags(args: argparse.Namespace) -> list[str]:
    raw = args.tags if isinstance(args.tags, list) else [args.tags]
    return [t.strip() for chunk in raw if chunk for t in chunk.split(",") if t.strip()]


@dataclass
class SpecSource:
    """The spec's text and, when it came from a registry, the image and artifact it was attached to."""

    text: str
    image: str = ""
    image_digest: str = ""
    artifact_digest: str = ""
    warnings: list[str] = field(default_factory=list)


def _explicit_credentials(args: argparse.Namespace) -> bool:
    return bool(args.registry_username or args.registry_password_stdin or args.registry_token_stdin)


def daemon_fetches(args: argparse.Namespace) -> bool:
    """With --node and no credentials of our own, the daemon fetches the artifact itself."""
    return bool(args.image and args.node and not _explicit_credentials(args) and not args.ca_file)


def obtain_spec(args: argparse.Namespace) -> SpecSource:
    """The spec text, from a file, stdin or the image's compatibility artifact in a registry."""
    if args.image:
        if daemon_fetches(args):
            return SpecSource(text="")
        from nodecompat.oci.discovery import fetch_compat_spec
        from nodecompat.oci.errors import RegistryError

        try:
            auth = registry_auth_from_args(args)
            got = fetch_compat_spec(
                args.image, platform=args.platform, plain_http=args.plain_http, auth=auth,
                ca_file=args.ca_file, timeout=args.timeout,
            )
        except RegistryError as exc:
            raise CommandError(f"{exc.code}: {exc}") from None
        return SpecSource(got.text, got.reference, got.image_digest, got.artifact_digest, list(got.warnings))
    return SpecSource(_read_spec_file(args))


def _read_spec_file(args: argparse.Namespace) -> str:
    try:
        return read_text_limited(args.spec, MAX_SPEC_BYTES, "spec")
    except InputError as exc:
        raise CommandError(str(exc)) from None


def load_snapshot(path: str) -> tuple[Features, dict[str, str]]:
    """NFD's features JSON; a `probes` list with failed statuses makes their features unknown."""
    try:
        data = json.loads(read_text_limited(path, MAX_SNAPSHOT_BYTES, "features snapshot"))
    except RecursionError:
        raise CommandError(f"features snapshot {path} is nested too deeply to be NFD features JSON") from None
    except InputError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:
        raise CommandError(f"cannot read features snapshot {path}: {exc}") from None
    try:
        features = Features.from_nfd(data)
    except ValueError as exc:
        raise CommandError(f"features snapshot {path}: {exc}") from None
    probes = data.get("probes", [])
    if not isinstance(probes, list) or not all(
        isinstance(st, dict) and isinstance(st.get("name"), str) and isinstance(st.get("ok"), bool)
        and isinstance(st.get("features", []), list)
        for st in probes
    ):
        raise CommandError(
            f"features snapshot {path}: `probes` must be a list of probe statuses "
            "({name, ok, error, features}) as `nodecompat features -o json` writes them"
        )
    unknown: dict[str, str] = {}
    for st in probes:
        if not st["ok"]:
            for name in st.get("features", []):
                unknown[str(name)] = f"probe {st['name']} failed: {st.get('error', '')}"
    return features, unknown


def obtain_verdict(args: argparse.Namespace, source: SpecSource) -> Verdict:
    verdict = _verdict(args, source.text)
    if source.image:
        verdict.image, verdict.image_digest = source.image, source.image_digest
        verdict.artifact_digest = source.artifact_digest
    verdict.warnings = [*source.warnings, *verdict.warnings]
    return verdict


def nfd_mode(args: argparse.Namespace) -> bool:
    """--nfd-compat, or -o nfd-json (NFD's own output only means something for NFD's view)."""
    return bool(args.nfd_compat or args.output == "nfd-json")


def _verdict(args: argparse.Namespace, text: str) -> Verdict:
    tags = _tags(args)
    nfd = nfd_mode(args)
    if args.node:
        from nodecompat.clients.node_client import NodeCallError, NodeClient
        from nodecompat.server.tls import TlsConfigError

        try:
            credentials = channel_credentials_from_args(args)
        except TlsConfigError as exc:
            raise CommandError(str(exc)) from None
        try:
            with NodeClient(args.node, credentials=credentials, timeout=args.timeout) as client:
                if daemon_fetches(args):
                    result = client.validate(
                        image=args.image, tags=tags, platform=args.platform or "",
                        plain_http=args.plain_http, nfd_compat=nfd, nfd_json=args.output == "nfd-json",
                    )
                else:
                    result = client.validate(
                        spec_text=text, tags=tags, nfd_compat=nfd, nfd_json=args.output == "nfd-json"
                    )
        except NodeCallError as exc:
            if exc.problems:  # an invalid spec: the status details carry every problem
                head = exc.message.split("\n", 1)[0]
                raise CommandError(f"node {args.node}: {head}\n  " + "\n  ".join(exc.problems)) from None
            from nodecompat.clients.call_errors import explain

            hint = explain(args, exc.code, exc.message, "node", args.node)
            raise CommandError(f"node {args.node}: {exc}{hint}") from None
        except ValueError as exc:  # not HOST:PORT
            raise CommandError(f"--node {exc}") from None
        assert isinstance(result.verdict, Verdict)
        return result.verdict
    try:
        spec = parse_spec(text, nfd_compat=nfd)
    except SpecError as exc:
        where = args.spec if args.spec else f"the spec attached to {args.image}"
        raise CommandError("invalid spec:\n  " + "\n  ".join(locate(p, where) for p in exc.problems)) from None
    from nodecompat.engine.evaluate import evaluate

    if args.features:
        features, unknown = load_snapshot(args.features)
    else:
        from nodecompat.hostroot import HostRoot
        from nodecompat.probes.runner import probe_once

        try:
            host = HostRoot.checked(args.host_root)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        rnd = probe_once(host)
        features, unknown = rnd.features, rnd.unknown_features()
    verdict = evaluate(spec, features, tags=tags, unknown=unknown, nfd_view=nfd)
    verdict.warnings = [*spec.warnings, *verdict.warnings]
    # Evaluated on the host's names as read (as the daemon evaluates); host names that are not UTF-8 are then
    # spelt as the daemon's answer spells them (eth\xff: nodecompat/utf8.py), in every output format.
    return Verdict.from_dict(utf8_json(verdict.to_dict()))


def render(args: argparse.Namespace, verdict: Verdict) -> str:
    """The chosen output; in NFD mode a run NFD would stop ends as an error in every format, as NFD's does.

    NFD's `nfd compat validate-node` prints nothing and exits non-zero when a matcher returns an error
    (cmd/nfd/subcmd/compat/validate-node.go; pkg/apis/nfd/nodefeaturerule/expression.go), whatever
    --output-json says, so `--nfd-compat` does the same for table, json and nfd-json (exit 2).
    """
    stop = next((w for w in verdict.warnings if w.startswith("nfd compat validate-node would stop")), "")
    if stop and nfd_mode(args):
        raise CommandError(stop)
    if args.output == "json":
        return json.dumps(verdict.to_dict(), indent=2) + "\n"
    if args.output == "nfd-json":
        if not verdict.nfd_json:
            raise CommandError(stop or "no nfd-json output")
        return verdict.nfd_json
    return render_table(verdict, colour=sys.stdout.isatty())


def run(args: argparse.Namespace) -> int:
    try:
        if tls_flags_given(args) and not args.node:
            raise CommandError("--tls-ca/--tls-cert/--tls-key apply to --node only")
        source = obtain_spec(args)
        verdict = obtain_verdict(args, source)
        out = render(args, verdict)
    except CommandError as exc:
        print(f"nodecompat validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(out)
    sys.stdout.flush()
    return EXIT_OK if verdict.compatible else EXIT_NOT_COMPATIBLE
