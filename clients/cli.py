"""The `nodecompat` command: one sub-command module per job, each registering itself here.

Exit status follows grep's convention wherever a yes/no answer is asked: 0 yes (compatible, clean),
1 no, 2 error (with the error on stderr).

Fast start: only the module of the sub-command being run is imported (the others are listed from the
COMMANDS table below, with the same one-line help), so `nodecompat validate` never pays for grpc,
requests or the OCI client it does not use. `--help` of the top level, `--version` and the shell
completion scripts need no sub-command module at all; completing a command line (argcomplete calls
us with _ARGCOMPLETE set) builds the full parser.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from nodecompat.clients import exit_codes
from nodecompat.clients.help_format import Parser

# name -> (module with register(subparsers) setting `func`, one-line help also used by the module).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("nodecompat.clients.cmd_serve", "run the node daemon (gRPC NodeService)"),
    "features": ("nodecompat.clients.cmd_features", "show the node's features (local probe, or --node a daemon)"),
    "validate": ("nodecompat.clients.cmd_validate", "evaluate an image compatibility spec against a node"),
    "lint": (
        "nodecompat.clients.cmd_lint",
        "check a spec for mistakes (parse errors, unknown features/attributes, impossible rules)",
    ),
    "attach": (
        "nodecompat.clients.cmd_attach",
        "attach a compatibility spec to an image in a registry, or list attached specs",
    ),
    "aggregator": ("nodecompat.clients.cmd_aggregator", "run the fleet aggregator (gRPC FleetService)"),
    "fleet": ("nodecompat.clients.cmd_fleet", "query a fleet aggregator (which nodes fit, the nodes' health)"),
    "what-if": (
        "nodecompat.clients.cmd_whatif",
        "check many images/specs against planned hosts (feature snapshots) before a migration",
    ),
    "translate": (
        "nodecompat.clients.cmd_translate",
        "translate a spec into an NFD NodeFeatureRule/NodeFeatureGroup or DRA DeviceClass+ResourceClaimTemplate",
    ),
    "webhook": (
        "nodecompat.clients.cmd_webhook",
        "run the Kubernetes admission webhook that places pods only on nodes that fit their images",
    ),
    "affinity": (
        "nodecompat.clients.cmd_affinity",
        "print the nodeAffinity that places a pod on the fleet's nodes fitting an image or spec (for GitOps)",
    ),
    "completion": ("nodecompat.clients.cmd_completion", "print a shell completion script (bash, zsh or fish)"),
}
COMMAND_MODULES = tuple(module for module, _help in COMMANDS.values())


class _VersionAction(argparse.Action):
    """--version without importing importlib.metadata unless asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_args: object, **_kw: object) -> None:
        print(f"nodecompat {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version (pyproject's), else the package's own."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version("nodecompat")
    except Exception:
        from nodecompat import __version__

        return __version__


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser. None: every sub-command registered (completion, tests). A command name: that one alone
    (the others are never needed when a valid command runs). Anything else ("" for none): every command
    listed by its help line alone, for --help and argparse's invalid-choice message."""
    parser = Parser(
        prog="nodecompat",
        description="Will this container image run well on that machine, and on which machines of a fleet? "
        "Exit status as grep: 0 yes, 1 no, 2 error.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
        elif only not in COMMANDS:  # listing: --help, no command, a mistyped one (stubs need no import)
            sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first non-option word), if it is one of ours."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "_ARGCOMPLETE" in os.environ:  # a shell asks for completions: the full parser, then exit
        import argcomplete

        argcomplete.autocomplete(build_parser())
    parser = build_parser(_command_in(argv) or "")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug or an unforeseen input: still "could not answer", never "no"
        if os.environ.get("NODECOMPAT_DEBUG"):
            import traceback

            traceback.print_exc()
        print(
            f"nodecompat {args.command}: unexpected error: {type(exc).__name__}: {exc}"
            " (set NODECOMPAT_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return exit_codes.ERROR


if __name__ == "__main__":
    sys.exit(main())
