"""Registry flags shared by `attach` and `validate --image`, with NFD's names and stdin rules.

NFD reads the password or token from stdin whole and trims one trailing "\\n" then one trailing
"\\r"; the two stdin flags are mutually exclusive. Unlike NFD, a username without a password (or
the reverse) is an error instead of a silent fall-back to anonymous, and without explicit
credentials the docker config file's `auths` are used.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from nodecompat.oci.errors import InvalidArgumentError

if TYPE_CHECKING:  # the OCI client is imported only when a registry is used (fast start)
    from nodecompat.oci.auth import RegistryAuth

_MAX_SECRET = 64 * 1024
# One spelling of --platform for `validate`, `attach` and `fleet validate`.
PLATFORM_METAVAR = "OS[/ARCH[/VARIANT]][:OS_VERSION]"
PLATFORM_HELP = "resolve a multi-platform image index to this platform's manifest (as NFD: the artifact is looked " \
    "up for exactly what the reference resolves to)"


def add_registry_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry")
    group.add_argument("--platform", default=None, metavar=PLATFORM_METAVAR, help=PLATFORM_HELP)
    group.add_argument("--plain-http", action="store_true", help="use HTTP, not HTTPS, for the registry")
    group.add_argument("--ca-file", default=None, metavar="FILE", help="CA bundle to verify the registry")
    group.add_argument("--registry-username", default=None, metavar="USER",
                       help="registry user name (the password comes from --registry-password-stdin)")
    secrets = group.add_mutually_exclusive_group()
    secrets.add_argument("--registry-password-stdin", action="store_true",
                         help="read the registry password from stdin")
    secrets.add_argument("--registry-token-stdin", action="store_true",
                         help="read a registry bearer token from stdin")


def read_secret(stream: TextIO) -> str:
    """Read stdin whole; trim one trailing newline, then one trailing carriage return (as NFD)."""
    text = stream.read(_MAX_SECRET + 1)
    if len(text) > _MAX_SECRET:
        raise InvalidArgumentError("secret on stdin is longer than 64 KiB")
    text = text.removesuffix("\n")
    return text.removesuffix("\r")


def registry_auth_from_args(args: argparse.Namespace, stdin: TextIO | None = None) -> RegistryAuth:
    """RegistryAuth from the parsed flags; raises InvalidArgumentError on inconsistent flags."""
    from nodecompat.oci.auth import RegistryAuth

    stream = stdin if stdin is not None else sys.stdin
    username = getattr(args, "registry_username", None)
    password = token = None
    if getattr(args, "registry_password_stdin", False):
        if not username:
            raise InvalidArgumentError("--registry-password-stdin needs --registry-username")
        password = read_secret(stream)
        if not password:
            raise InvalidArgumentError("--registry-password-stdin: stdin held no password")
    elif getattr(args, "registry_token_stdin", False):
        if username:
            raise InvalidArgumentError("--registry-token-stdin cannot be combined with --registry-username")
        token = read_secret(stream)
        if not token:
            raise InvalidArgumentError("--registry-token-stdin: stdin held no token")
    elif username:
        raise InvalidArgumentError("--registry-username needs --registry-password-stdin")
    return RegistryAuth.from_sources(username=username, password=password, token=token,
                                     ca_file=getattr(args, "ca_file", None))
