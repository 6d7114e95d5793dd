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
from nodecompat.clients.input_files import read_text_limited
from nodecompat.clients.tls_args import add_tls_client_args, channel_credentials_from_args, unavailable_hint
from nodecompat.engine.limits import MAX_SPEC_BYTES

if TYPE_CHECKING:
    from nodecompat.clients.fleet_client import FleetAnswer, FleetCallError, FleetClient

EXIT_FIT, EXIT_NONE, EXIT_ERROR = exit_codes.YES, exit_codes.NO, exit_codes.ERROR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="query a fleet aggregator")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    fsub.required = True

    v = fsub.add_parser("validate", help="which nodes of the fleet can run this image (or spec)?")
    _common(v)
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="image reference; its compatibility artifact is fetched once, by the aggregator")
    src.add_argument("--spec", metavar="FILE", help="image compatibility spec (YAML/JSON) to send inline; - for stdin")
    v.add_argument("--selector", action="append", default=[], metavar="K=V", help="only nodes with this label")
    v.add_argument("--tags", action="append", default=[], help="only compatibility sets with these tags")
    v.add_argument("--platform", default="", help="os/arch[/variant] of an image index to use")
    v.add_argument("--plain-http", action="store_true", help="reach the registry over plain HTTP")
    v.add_argument("--timeout", type=float, default=0.0, help="overall deadline in seconds (0: aggregator default)")
    v.add_argument("--nfd-compat", action="store_true", help="accept what NFD accepts (see `validate --nfd-compat`)")
    v.set_defaults(func=run_validate)

    n = fsub.add_parser("nodes", help="list the fleet's nodes with their health")
    _common(n)
    n.add_argument("--selector", action="append", default=[], metavar="K=V", help="only nodes with this label")
    n.set_defaults(func=run_nodes)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aggregator", required=True, metavar="HOST:PORT", help="the aggregator's address")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
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
    hint = unavailable_hint(args, exc.message) if exc.code == "UNAVAILABLE" else ""
    return _error(f"{args.aggregator}: {exc}{hint}")


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
                platform=args.platform,
                plain_http=args.plain_http,
                selector=selector,
                timeout=args.timeout,
                nfd_compat=args.nfd_compat,
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
    return "\n".join([*lines, "", tail]) + "\n"


def run_nodes(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from nodecompat.clients.fleet_client import FleetCallError
    from nodecompat.server.tls import TlsConfigError

    try:
        selector = parse_selector(args.selector)
        with _client(args) as client:
            nodes = client.list_nodes(selector)
    except (ValueError, TlsConfigError) as exc:
        return _error(str(exc))
    except FleetCallError as exc:
        return _call_error(args, exc)
    if args.output == "json":
        json.dump({"nodes": [asdict(n) for n in nodes]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [("NODE", "ADDRESS", "SOURCE", "HEALTH", "LAST CONTACT", "LABELS")]
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
        rows.append((n.name, n.address, n.source, n.health, n.last_contact or "never", labels))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return 0
