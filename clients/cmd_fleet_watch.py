"""`nodecompat fleet watch`: an image's fit set over the fleet, then every transition as it happens.

    nodecompat fleet watch --aggregator 127.0.0.1:50050 --image reg/app:v1
    nodecompat fleet watch --aggregator 127.0.0.1:50050 --spec gpu.yaml -o json   # one JSON object a line

Lines are printed (and flushed) as the aggregator sends them: first each node's current state, a
"synced" line with the counts, then one line per transition (COMPATIBLE, INCOMPATIBLE with the
reason, UNREACHABLE, STALE, LEFT). Runs until interrupted or --duration passes (exit 0); 2 on error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from nodecompat.clients import exit_codes


def register_watch(fsub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    w = fsub.add_parser(
        "watch",
        help="watch which nodes fit an image, and every change as it happens (drift)",
        description="Print the fit set of an image (or --spec) over the fleet from the aggregator's live "
        "inventory, then one line per node transition: COMPATIBLE, INCOMPATIBLE (with the reason), "
        "UNREACHABLE, STALE, LEFT.",
        epilog="exit status: 0 when --duration passes or the aggregator ends the stream, 2 error",
    )
    common(w)
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", metavar="REF", help="image reference; the aggregator fetches its artifact once")
    src.add_argument("--spec", metavar="FILE", help="image compatibility spec (YAML/JSON); - for stdin")
    w.add_argument("--selector", action="append", default=[], metavar="K=V",
                   help="only nodes with this label (repeatable, or K=V,K2=V2)")
    w.add_argument("--tags", action="append", default=[], help="only compatibility sets with these tags")
    w.add_argument("--platform", default="", help="os/arch[/variant] of an image index to use")
    w.add_argument("--plain-http", action="store_true", help="the aggregator reaches the registry over plain HTTP")
    w.add_argument("--nfd-compat", action="store_true",
                   help="NFD mode: what NFD accepts, evaluated against NFD's view (see `validate --nfd-compat`)")
    w.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this many seconds (default: 0, until interrupted)")
    w.set_defaults(func=run_watch)


def _line(ev: Any) -> str:
    from nodecompat.v1 import inventory_pb2

    state = inventory_pb2.FleetEvent.State.Name(ev.state)
    when = "initial" if ev.initial else dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    head = f"{when:8}  {ev.node_name:20} {ev.address:22} {state}"
    if ev.state == inventory_pb2.FleetEvent.COMPATIBLE and ev.score:
        head += f" (score {ev.score})"
    if ev.reasons:
        head += f": {ev.reasons[0]}" + (f" (+{len(ev.reasons) - 1} more)" if len(ev.reasons) > 1 else "")
    return head


def run_watch(args: argparse.Namespace) -> int:
    from nodecompat.clients.cmd_fleet import _call_error, _client, _error, parse_selector, read_spec
    from nodecompat.clients.fleet_client import FleetCallError, event_to_dict, watch_fleet
    from nodecompat.server.tls import TlsConfigError

    try:
        selector = parse_selector(args.selector)
        if not 0 <= args.duration <= 7 * 86400:
            raise ValueError("--duration must be between 0 and 604800 seconds")
        spec_text = read_spec(args.spec) if args.spec is not None else None
        client = _client(args)
    except (OSError, UnicodeDecodeError, ValueError, TlsConfigError) as exc:
        return _error(str(exc))
    out = sys.stdout
    with client:
        try:
            for item in watch_fleet(
                client, image=args.image, spec_text=spec_text,
                tags=[t for x in args.tags for t in x.split(",") if t], platform=args.platform,
                plain_http=args.plain_http, selector=selector, nfd_compat=args.nfd_compat,
                timeout=args.duration or None,
            ):
                if item.WhichOneof("item") == "event":
                    if args.output == "json":
                        out.write(json.dumps(event_to_dict(item.event)) + "\n")
                    else:
                        out.write(_line(item.event) + "\n")
                else:
                    s = item.synced
                    if args.output == "json":
                        out.write(json.dumps({"synced": {"compatible": s.compatible, "incompatible": s.incompatible,
                                                         "unavailable": s.unavailable}}) + "\n")
                    else:
                        out.write(f"synced: {s.compatible} fit, {s.incompatible} do not, {s.unavailable} "
                                  "unavailable; watching for changes\n")
                out.flush()
        except FleetCallError as exc:
            if exc.code == "DEADLINE_EXCEEDED" and args.duration:
                return exit_codes.YES
            return _call_error(args, exc)
    return exit_codes.YES
