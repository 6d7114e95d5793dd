"""`nodecompat lint FILE`: every problem of a spec, each with its path.

Exit 0 clean, 1 problems, 2 unreadable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nodecompat.lint import lint_spec


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lint",
        help="check a spec for mistakes (parse errors, unknown features/attributes, impossible rules)",
        description="Check an image compatibility spec. Exit 0 clean, 1 problems found, 2 unreadable file.",
    )
    p.add_argument("file", metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"nodecompat lint: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    problems = lint_spec(data)
    for p in problems:
        print(f"{args.file}: {p}")
    if not problems:
        print(f"{args.file}: ok")
    return 1 if problems else 0
