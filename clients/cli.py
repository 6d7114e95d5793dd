"""The `nodecompat` command: one sub-command module per job, each registering itself here.

Exit status follows grep's convention wherever a yes/no answer is asked: 0 yes (compatible, clean),
1 no, 2 error (with the error on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from nodecompat.clients import exit_codes

# Each module has register(subparsers) and sets `func` on its parser: func(args) -> exit code.
COMMAND_MODULES = (
    "nodecompat.clients.cmd_serve",
    "nodecompat.clients.cmd_features",
    "nodecompat.clients.cmd_validate",
    "nodecompat.clients.cmd_lint",
    "nodecompat.clients.cmd_attach",
    "nodecompat.clients.cmd_aggregator",
    "nodecompat.clients.cmd_fleet",
    "nodecompat.clients.cmd_whatif",
)



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nodecompat",
        description="Will this container image run well on that machine, and on which machines of a fleet?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug or an unforeseen input: still "could not answer", never "no"
        if os.environ.get("NODECOMPAT_DEBUG"):
            traceback.print_exc()
        print(
            f"nodecompat {args.command}: unexpected error: {type(exc).__name__}: {exc}"
            " (set NODECOMPAT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return exit_codes.ERROR


if __name__ == "__main__":
    sys.exit(main())
