"""Flags for the server runtime's limits, shared by `nodecompat serve` and `nodecompat aggregator`.

Each limit is described in docs/security.md ("Limits"); server/runtime/runtime.py says how it is enforced.
"""

from __future__ import annotations

import argparse

from nodecompat.server import limits


def add_runtime_flags(p: argparse.ArgumentParser, *, max_call_seconds: float) -> None:
    g = p.add_argument_group("limits (denial of service)")
    g.add_argument("--max-concurrent-calls", type=int, default=limits.MAX_CONCURRENT_CALLS,
                   help="work calls (not Health/reflection) served at once; more get RESOURCE_EXHAUSTED "
                   f"(default {limits.MAX_CONCURRENT_CALLS})")
    g.add_argument("--max-call-seconds", type=float, default=max_call_seconds,
                   help=f"the longest a call may run, whatever its deadline (default {max_call_seconds:g})")
    g.add_argument("--request-timeout", type=float, default=limits.REQUEST_TIMEOUT,
                   help="seconds a call may take to send its request message before it is ended "
                   f"(default {limits.REQUEST_TIMEOUT:g})")
    g.add_argument("--workers", type=int, default=limits.WORKERS,
                   help=f"threads running blocking work (evaluation, registry fetches, probe rounds) "
                   f"(default {limits.WORKERS})")
    g.add_argument("--max-connection-idle", type=float, default=limits.MAX_CONNECTION_IDLE,
                   help="close a client connection with no call for this many seconds "
                   f"(default {limits.MAX_CONNECTION_IDLE:g})")


def runtime_problem(args: argparse.Namespace) -> str:
    """What is wrong with the runtime flags, or ""."""
    if args.max_concurrent_calls < 1:
        return "--max-concurrent-calls must be >= 1"
    if args.workers < 1:
        return "--workers must be >= 1"
    for flag in ("max_call_seconds", "request_timeout", "max_connection_idle"):
        value = getattr(args, flag)
        if not value > 0:
            return f"--{flag.replace('_', '-')} must be > 0"
    return ""


def runtime_config(args: argparse.Namespace) -> dict[str, float | int]:
    """The DaemonConfig/AggregatorConfig fields set by these flags."""
    return {
        "max_concurrent_calls": args.max_concurrent_calls,
        "max_call_seconds": args.max_call_seconds,
        "request_timeout": args.request_timeout,
        "workers": args.workers,
        "max_connection_idle": args.max_connection_idle,
    }
