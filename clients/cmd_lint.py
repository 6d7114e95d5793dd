"""`nodecompat lint FILE`: every problem of a spec, each with its path.

Exit 0 clean, 1 problems, 2 unreadable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from nodecompat.clients import exit_codes
from nodecompat.clients.input_files import InputError, locate, read_bytes_limited
from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.engine.lint import lint_spec


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "lint",
        help="check a spec for mistakes (parse errors, unknown features/attributes, impossible rules)",
        description="Check an image compatibility spec. Exit 0 clean, 1 problems found, 2 unreadable file.",
    )
    p.add_argument("file", metavar="FILE", help="spec file (YAML or JSON; - for stdin)")
    p.set_defaults(func=run)


def _unreadable(data: bytes) -> str | None:
    """Why the bytes are not spec text at all (binary or not UTF-8), or None."""
    if b"\x00" in data:
        return "a binary file (it holds NUL bytes), not a YAML or JSON spec"
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        data = read_bytes_limited(args.file, MAX_SPEC_BYTES, "spec")
    except InputError as exc:
        print(f"nodecompat lint: {exc}", file=sys.stderr)
        return exit_codes.ERROR
    unreadable = _unreadable(data)
    if unreadable:
        print(f"nodecompat lint: cannot read {args.file}: {unreadable}", file=sys.stderr)
        return exit_codes.ERROR
    problems = lint_spec(data)
    for p in problems:
        print(locate(str(p), args.file))
    if not problems:
        print(f"{args.file}: ok")
    return exit_codes.NO if problems else exit_codes.YES
