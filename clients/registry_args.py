"""Registry flags shared by `attach` and `validate --image`, with NFD's names and stdin rules.

NFD reads the password or token from stdin whole and trims one trailing "\\n" then one trailing
"\\r"; the two stdin flags are mutually exclusive. Unlike NFD, a username without a password (or
the reverse) is an error instead of a silent fall-back to anonymous, and without explicit
credentials the docker config file's `auths` are used (--registry-auth-file names one; a named
file that is missing is an error, the default one missing is no credentials).
"""

from __future__ import annotations

import argparse
import os
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
    add_credential_args(group)


def add_credential_args(group: argparse._ActionsContainer) -> None:
    """--registry-username, --registry-password-stdin | --registry-token-stdin, --registry-auth-file."""
    group.add_argument("--registry-username", default=None, metavar="USER",
                       help="registry user name (the password comes from --registry-password-stdin)")
    secrets = group.add_mutually_exclusive_group()
    secrets.add_argument("--registry-password-stdin", action="store_true",
                         help="read the registry password from stdin")
    secrets.add_argument("--registry-token-stdin", action="store_true",
                         help="read a registry bearer token from stdin")
    group.add_argument("--registry-auth-file", default=None, metavar="FILE",
                       help="docker config.json whose `auths` give per-registry credentials (e.g. a mounted "
                       "kubernetes.io/dockerconfigjson Secret's .dockerconfigjson); default $DOCKER_CONFIG/"
                       "config.json, else ~/.docker/config.json. Explicit flags above take precedence")


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
    auth_file = getattr(args, "registry_auth_file", None)
    if auth_file is not None and not os.path.isfile(auth_file):
        raise InvalidArgumentError(f"--registry-auth-file {auth_file}: no such file")
    return RegistryAuth.from_sources(username=username, password=password, token=token,
                                     docker_config=auth_file if auth_file is not None else True,
                                     ca_file=getattr(args, "ca_file", None))
