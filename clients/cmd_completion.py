"""`nodecompat completion bash|zsh|fish`: print a shell completion script (as `nfd completion` does).

The script comes from argcomplete (a maintained library; shtab has no fish support): it asks the
`nodecompat` program itself for candidates, so completions always match the installed version's
sub-commands and options. Load it with, e.g., `source <(nodecompat completion bash)` or
`nodecompat completion fish > ~/.config/fish/completions/nodecompat.fish`.
"""

from __future__ import annotations

import argparse
import sys

from nodecompat.clients import exit_codes

SHELLS = ("bash", "zsh", "fish")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script for SHELL on stdout. bash: `source <(nodecompat completion bash)`; "
        "zsh: `source <(nodecompat completion zsh)`; fish: "
        "`nodecompat completion fish > ~/.config/fish/completions/nodecompat.fish`.",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(func=run)


def script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS)."""
    import argcomplete

    return str(argcomplete.shellcode(["nodecompat"], shell=shell))


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return exit_codes.YES
