"""`nodecompat fleet validate|nodes`: ask the aggregator which nodes of the fleet can run an image.

Exit status as grep: 0 some node fits, 1 none does, 2 error. A progress bar is drawn on stderr only when
stderr is a terminal (pipes and CI logs get the table alone); `-o json` prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import locate, read_text_limited
from nodecompat.clients.registry_args import PLATFORM_HELP, PLATFORM_METAVAR
from nodecompat.clients.tls_args import add_tls_client_args, channel_credentials_from_args
from nodecompat.engine.limits import MAX_SPEC_BYTES

if TYPE_CHECKING:
    from nodecompat.clients.fleet_client import FleetAnswer, FleetCallError, FleetClient

EXIT_FIT, EXIT_NONE, EXIT_ERROR = exit_codes.YES, exit_codes.NO, exit_codes.ERROR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="query a fleet aggregator (which nodes fit, the nodes' health)",
        description="Ask a fleet aggregator (`nodecompat aggregator`): `fleet validate` which nodes can run an "
        "image, `fleet nodes` which nodes it knows and their health.",
    )
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fsub.required = True

    v = fsub.add_parser(
        "validate",
        help="which nodes of the fleet can run this image (or spec)?",
        description="Ask every selected node of the fleet, at once, whether it can run the image (its attached "
        "compatibility spec) or --spec; nodes are listed as they answer, ranked, with the reasons a node does "
        "not fit and the error of a node that could not answer.",
        epilog="exit status: 0 some node fits, 1 no node fits (or none is selected), 2 error",
    )
    _common(v)
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", metavar="REF",
                     help="image reference; its compatibility artifact is fetched once, by the aggregator")
    src.add_argument("--spec", metavar="FILE", help="image compatibility spec (YAML/JSON) to send inline; - for stdin")
    v.add_argument("--selector", action="append", default=[], metavar="K=V",
                   help="only nodes with this label (repeatable, or K=V,K2=V2)")
    v.add_argument("--tags", action="append", default=[],
                   help="only compatibility sets with these tags (comma-separated, repeatable)")
    v.add_argument("--platform", default=None, metavar=PLATFORM_METAVAR, help=PLATFORM_HELP)
    v.add_argument("--plain-http", action="store_true", help="the aggregator reaches the registry over plain HTTP")
    v.add_argument("--timeout", type=float, default=0.0,
                   help="overall deadline in seconds (default: 0, the aggregator's --default-timeout)")
    v.add_argument(
        "--nfd-compat",
        action="store_true",
        help="NFD mode: what NFD accepts, evaluated against NFD's view (see `validate --nfd-compat`)",
    )
    v.add_argument("--live", action="store_true",
                   help="ask every node now instead of answering from the aggregator's live inventory")
    v.add_argument("--max-staleness", type=float, default=0.0, metavar="SECONDS",
                   help="ask live the nodes whose inventory features were probed longer ago than this "
                   "(default: 0, any age while the node's stream is healthy)")
    v.set_defaults(func=run_validate)

    from nodecompat.clients.cmd_fleet_watch import register_watch

    register_watch(fsub, _common)

    n = fsub.add_parser(
        "nodes",
        help="list the fleet's nodes with their health",
        description="List the nodes the aggregator knows (nodes file, DNS, registrations) with their health: "
        "UNKNOWN until the aggregator's first health check of a node, then SERVING, NOT_SERVING or the "
        "gRPC status of the failed check.",
    )
    _common(n)
    n.add_argument("--selector", action="append", default=[], metavar="K=V",
                   help="only nodes with this label (repeatable, or K=V,K2=V2)")
    n.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for the aggregator to answer and every listed node to be SERVING; "
                   "exit 1 if they are not by then (default: 0, answer at once)")
    n.set_defaults(func=run_nodes)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregator", required=True, metavar="HOST:PORT", help="the aggregator's address")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    add_tls_client_args(p, "the aggregator")


def parse_selector(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in items:
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--selector {item!r}: expected KEY=VALUE")
            out[key.strip()] = value.strip()
    return out


def _client(args: argparse.Namespace) -> FleetClient:
    from nodecompat.clients.fleet_client import FleetClient

    return FleetClient(args.aggregator, credentials=channel_credentials_from_args(args))


def _call_error(args: argparse.Namespace, exc: FleetCallError) -> int:
    from nodecompat.clients.call_errors import explain

    hint = explain(args, exc.code, exc.message, "aggregator", args.aggregator)
    text = f"{exc}{hint}"
    if getattr(args, "spec", None) and '"<unicode string>"' in text:  # the inline spec is --spec's file
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if "<unicode string>" in line:
                rest = line.lstrip(" -")
                lines[i] = line[: len(line) - len(rest)] + locate(rest, args.spec)
        text = "\n".join(lines)
    return _error(f"{args.aggregator}: {text}")


def read_spec(path: str) -> str:
    """The spec text of --spec (a file or - for stdin); ValueError naming the file when it cannot be read."""
    return read_text_limited(path, MAX_SPEC_BYTES, "--spec")


def _error(msg: str) -> int:
    print(f"nodecompat fleet: {msg}", file=sys.stderr)
    return EXIT_ERROR


class Progress:
    """A one-line bar on a terminal; inert elsewhere."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.enabled = stream.isatty()
        self.done = self.fits = self.failed = 0

    def update(self, compatible: bool, status: str) -> None:
        self.done += 1
        self.fits += compatible
        self.failed += status != "OK"
        if not self.enabled:
            return
        total = max(self.total, self.done)
        width = 30
        filled = int(width * self.done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{total} nodes, {self.fits} fit, {self.failed} failed")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run_validate(args: argparse.Namespace) -> int:
    from nodecompat.clients.fleet_client import FleetCallError, FleetSummary, NodeVerdict
    from nodecompat.server.tls import TlsConfigError

    try:
        selector = parse_selector(args.selector)
        if not 0 <= args.timeout <= 3600:
            raise ValueError("--timeout must be between 0 and 3600 seconds")
        if not args.max_staleness >= 0:
            raise ValueError("--max-staleness must be >= 0 seconds")
        spec_text = read_spec(args.spec) if args.spec is not None else None
        client = _client(args)
    except (OSError, UnicodeDecodeError, ValueError, TlsConfigError) as exc:
        return _error(str(exc))
    nodes: list[NodeVerdict] = []
    summary: FleetSummary | None = None
    with client:
        total = 0
        if sys.stderr.isatty():
            try:
                total = len(client.list_nodes(selector, timeout=5))
            except FleetCallError:
                total = 0
        progress = Progress(sys.stderr, total)
        try:
            for item in client.stream(
                image=args.image,
                spec_text=spec_text,
                tags=[t for x in args.tags for t in x.split(",") if t],
                platform=args.platform or "",
                plain_http=args.plain_http,
                selector=selector,
                timeout=args.timeout,
                nfd_compat=args.nfd_compat,
                max_staleness=args.max_staleness,
                live=args.live,
            ):
                if isinstance(item, NodeVerdict):
                    nodes.append(item)
                    progress.update(item.compatible, item.status)
                else:
                    summary = item
        except FleetCallError as exc:
            progress.close()
            return _call_error(args, exc)
        progress.close()
    if summary is None:
        return _error("the aggregator ended the stream without a summary")
    from nodecompat.clients.fleet_client import FleetAnswer

    answer = FleetAnswer(nodes, summary)
    if not nodes and args.output == "table":
        print(f"nodecompat fleet: {no_node_hint(args, selector)}", file=sys.stderr)
    if args.output == "json":
        json.dump(answer.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_table(answer))
    return EXIT_FIT if summary.compatible else EXIT_NONE


def render_table(answer: FleetAnswer) -> str:
    """Ranked nodes; an incompatible node's reasons and a failed node's error in the last column."""
    rows = [("#", "NODE", "ADDRESS", "FITS", "SCORE", "STATUS", "LATENCY", "WHY NOT")]
    extra: dict[int, list[str]] = {}
    for i, n in enumerate(answer.ranked(), 1):
        ok = n.status == "OK"
        why = [] if n.compatible else (n.reasons if ok else [n.error or n.status])
        rows.append(
            (
                str(i),
                n.name,
                n.address,
                ("yes" if n.compatible else "no") if ok else "-",
                str(n.score) if ok else "-",
                n.status,
                f"{n.latency_seconds:.2f}s",
                why[0] if why else "",
            )
        )
        extra[len(rows) - 1] = why[1:]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = []
    for idx, row in enumerate(rows):
        head = "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
        lines.append(f"{head}  {row[-1]}".rstrip())
        pad = " " * (len(head) + 2)
        lines.extend(pad + more for more in extra.get(idx, []))
    s = answer.summary
    total = s.compatible + s.incompatible + s.failed
    tail = f"{s.compatible} of {total} node(s) fit, {s.incompatible} do not, {s.failed} failed"
    tail += f" ({s.wall_seconds:.2f}s)"
    if s.image_digest:
        tail += f"; image {s.image_digest}, artifact {s.artifact_digest}"
    if s.from_inventory:
        tail += (f"; {s.from_inventory} from the inventory ({s.distinct_feature_sets} distinct feature set(s)),"
                 f" {s.live} live")
    from nodecompat.fleet.whynot import summary_lines

    why = summary_lines(s.why_not)
    if why or s.probe_failed:
        why = ["", "why not:", *(f"  {line}" for line in why)]
        if s.probe_failed:
            why.append(f"  {s.probe_failed} node(s) with a failed probe (some facts unknown)")
    return "\n".join([*lines, "", tail, *why]) + "\n"


def no_node_hint(args: argparse.Namespace, selector: dict[str, str]) -> str:
    """Why the answer lists no node, and what to do."""
    if not selector:
        return ("the aggregator knows no node: give it --nodes-file or --dns, or start daemons with "
                "`nodecompat serve --register AGGREGATOR`")
    wanted = ",".join(f"{k}={v}" for k, v in selector.items())
    try:
        with _client(args) as client:
            everyone = client.list_nodes({}, timeout=5)
    except Exception:
        return f"no node matches --selector {wanted}"
    labels = sorted({f"{k}={v}" for n in everyone for k, v in n.labels.items()})
    known = f"labels in the fleet: {', '.join(labels)}" if labels else "no node of the fleet has labels"
    return (f"no node matches --selector {wanted} ({len(everyone)} node(s) in the fleet; {known}; "
            "a selector matches nodes having every K=V given)")


def run_nodes(args: argparse.Namespace) -> int:
    import time
    from dataclasses import asdict

    from nodecompat.clients.fleet_client import FleetCallError
    from nodecompat.server.tls import TlsConfigError

    if not 0 <= args.wait <= 3600:
        return _error("--wait must be between 0 and 3600 seconds")
    deadline = time.monotonic() + args.wait
    try:
        selector = parse_selector(args.selector)
        with _client(args) as client:
            while True:
                try:
                    nodes = client.list_nodes(selector)
                    if not args.wait or (nodes and all(n.health == "SERVING" for n in nodes)):
                        break
                except FleetCallError as exc:
                    if exc.code != "UNAVAILABLE" or time.monotonic() >= deadline:
                        raise
                    nodes = []
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
    except (ValueError, TlsConfigError) as exc:
        return _error(str(exc))
    except FleetCallError as exc:
        return _call_error(args, exc)
    waited_in_vain = bool(args.wait) and not (nodes and all(n.health == "SERVING" for n in nodes))
    if args.output == "json":
        json.dump({"nodes": [asdict(n) for n in nodes]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_NONE if waited_in_vain else EXIT_FIT
    if not nodes:
        print(f"nodecompat fleet: {no_node_hint(args, selector)}", file=sys.stderr)
        return EXIT_NONE if waited_in_vain else EXIT_FIT
    rows = [("NODE", "ADDRESS", "SOURCE", "HEALTH", "LAST CONTACT", "LABELS")]
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
        health = "UNKNOWN (checking)" if n.health == "UNKNOWN" else n.health
        rows.append((n.name, n.address, n.source, health, n.last_contact or "never", labels))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if waited_in_vain:
        print(f"nodecompat fleet: not every node is SERVING after --wait {args.wait:g}s", file=sys.stderr)
        return EXIT_NONE
    return EXIT_FIT
