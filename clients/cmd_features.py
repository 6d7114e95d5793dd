"""`nodecompat features`: what this machine (or a daemon's node) has, as NFD's JSON or a table.

`-o json` prints NFD's wire format (what `nfd export features` prints) with one extra top-level key,
`probes`, holding each probe's status, so a saved snapshot also says which facts are unknown.
`--nfd-only` keeps exactly what NFD publishes (probes/catalog.py: the probes' declared additions
removed), the set `validate --nfd-compat` evaluates against. With --node the daemon's round is
filtered here, by the declarations of the probes installed with this client.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import TYPE_CHECKING

from nodecompat.clients import exit_codes
from nodecompat.clients.tls_args import (
    add_tls_client_args,
    channel_credentials_from_args,
    tls_flags_given,
)
from nodecompat.utf8 import utf8_round

if TYPE_CHECKING:
    from nodecompat.probes.runner import ProbeRound

# A feature with more elements than this is summarised in the table (counts), unless --all or --prefix.
TABLE_GROUP_OVER = 24


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="show the node's features (local probe, or --node a daemon)",
        description="Show the node's features with NFD's names: probe this machine (or --host-root), or ask a "
        f"node daemon (--node). The table summarises features with more than {TABLE_GROUP_OVER} elements "
        "(kernel.config...) as counts: --prefix NAME or --all lists them. -o json prints NFD's features JSON "
        "plus each probe's status (a snapshot `validate --features` reads).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--host-root", default="/", help="probe the host under this root (default /)")
    src.add_argument("--node", metavar="HOST:PORT", help="ask a node daemon instead of probing locally")
    p.add_argument("-o", "--output", choices=("json", "table"), default="table", help="output format")
    p.add_argument(
        "--prefix",
        action="append",
        default=[],
        help="only features whose name starts with this, listed in full (repeatable; e.g. --prefix kernel.config)",
    )
    p.add_argument("--all", action="store_true", help="list every element of every feature in the table")
    p.add_argument("--refresh", action="store_true", help="with --node: make the daemon re-probe first")
    p.add_argument(
        "--nfd-only",
        action="store_true",
        help="only what NFD publishes (what `validate --nfd-compat` sees): nodecompat's additions "
        "(pci.device address/driver/numa_node, hugepage totals, gpu.*, memory.size ...) left out",
    )
    add_tls_client_args(p, "the --node daemon")
    p.set_defaults(func=run)


def snapshot_json(rnd: ProbeRound, node_name: str = "") -> dict[str, object]:
    """NFD's wire format plus `probes`, `node_name` and `probed_at` (readable by `validate --features`)."""
    from nodecompat import wire

    out: dict[str, object] = rnd.features.to_nfd()
    out["probes"] = wire.statuses_to_json(rnd.statuses)
    out["node_name"] = node_name
    out["probed_at"] = rnd.probed_at.isoformat()
    return out


def load_round(args: argparse.Namespace) -> tuple[str, ProbeRound]:
    if args.node:
        from nodecompat.clients.node_client import NodeCallError, NodeClient

        with NodeClient(args.node, credentials=channel_credentials_from_args(args)) as client:
            try:
                return client.get_features(refresh=args.refresh, prefixes=args.prefix)
            except NodeCallError as exc:
                from nodecompat.clients.call_errors import explain

                raise NodeCallError(exc.code, f"node {args.node}: {exc.message}"
                                    f"{explain(args, exc.code, exc.message, 'node', args.node)}") from None
    if tls_flags_given(args):
        raise ValueError("--tls-ca/--tls-cert/--tls-key apply to --node only")
    from nodecompat.clients.cmd_serve import node_name_default
    from nodecompat.hostroot import HostRoot
    from nodecompat.probes.runner import probe_once

    rnd = probe_once(HostRoot.checked(args.host_root))
    rnd.features = rnd.features.filtered(args.prefix)
    return node_name_default(), rnd


def _value_counts(values: list[str]) -> str:
    """`1312 = y, 421 = m, 12 other` for the most common values (what kernel.config is made of)."""
    counts = Counter(values).most_common()
    top = [(v, n) for v, n in counts[:3] if n > 1]
    rest = len(values) - sum(n for _v, n in top)
    parts = [f"{n} = {v}" for v, n in top]
    if rest:
        parts.append(f"{rest} other")
    return ", ".join(parts)


def render_table(rnd: ProbeRound, expand: bool = False) -> str:
    """The features as a table; features with more than TABLE_GROUP_OVER elements are one summary line
    each unless `expand` (--all, or a --prefix the user gave)."""
    lines: list[str] = []
    f = rnd.features
    grouped: list[str] = []
    for name in sorted(f.names()):
        if name in f.flags:
            elems = sorted(f.flags[name].elements)
            lines.append(f"{name}  (flags, {len(elems)})")
            lines.append("    " + " ".join(elems) if elems else "    -")
        if name in f.attributes:
            attrs = f.attributes[name].elements
            if len(attrs) > TABLE_GROUP_OVER and not expand:
                lines.append(f"{name}  (attributes, {len(attrs)}: {_value_counts([str(v) for v in attrs.values()])})")
                grouped.append(name)
            else:
                lines.append(f"{name}  (attributes)")
                for k, v in sorted(attrs.items()):
                    lines.append(f"    {k} = {v}")
        if name in f.instances:
            insts = f.instances[name].elements
            if len(insts) > TABLE_GROUP_OVER and not expand:
                lines.append(f"{name}  (instances, {len(insts)})")
                grouped.append(name)
                continue
            lines.append(f"{name}  (instances, {len(insts)})")
            for i, inst in enumerate(insts):
                pairs = " ".join(f"{k}={v}" for k, v in sorted(inst.attributes.items()))
                lines.append(f"    [{i}] {pairs}")
    if grouped:
        lines.append("")
        lines.append(
            f"summarised: {', '.join(grouped)} (list one with --prefix {grouped[0]}, or everything with --all)"
        )
    lines.append("")
    lines.append("probes:")
    for st in rnd.statuses:
        state = "ok" if st.ok else ("TIMEOUT" if st.timed_out else "FAILED")
        extra = f"  {st.error}" if st.error else ""
        lines.append(f"    {st.name:<10} {state:<8} {st.duration_seconds * 1000:8.1f} ms{extra}")
        for note in st.notes:
            lines.append(f"        note: {note}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        node_name, rnd = load_round(args)
    except Exception as exc:
        print(f"nodecompat features: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    if args.nfd_only:
        from nodecompat.probes.catalog import FeatureCatalog

        rnd.features = FeatureCatalog.registered().nfd_view(rnd.features)
    rnd = utf8_round(rnd)  # host names that are not UTF-8 spelt as the daemon sends them (eth\xff)
    if args.output == "json":
        json.dump(snapshot_json(rnd, node_name), sys.stdout, indent=2, sort_keys=False)
        sys.stdout.write("\n")
    else:
        print(render_table(rnd, expand=args.all or bool(args.prefix)))
    return exit_codes.YES
