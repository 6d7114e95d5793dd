"""The TLS client flags (`--tls-ca/--tls-cert/--tls-key`) shared by every command that dials a nodecompat server.

`fleet`, `features --node` and `validate --node` take the same three flags with the same meaning, so a
daemon or aggregator that requires mutual TLS is reachable from each of them; the PEM checks and the
credential rules are server/tls.py's (one place for both servers and clients). Kept apart from the
registry flags (`--ca-file`), which are about a different peer: the OCI registry.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # grpc is imported only by the commands that dial (fast start)
    import grpc

    from nodecompat.server.tls import ClientTls


def add_tls_client_args(parser: argparse.ArgumentParser, peer: str = "the server") -> None:
    """Add --tls-ca/--tls-cert/--tls-key to parser (help text names `peer`)."""
    group = parser.add_argument_group("TLS (to reach a server that serves TLS or requires mutual TLS)")
    group.add_argument("--tls-ca", default=None, metavar="PEM", help=f"CA to verify {peer} with; enables TLS")
    group.add_argument("--tls-cert", default=None, metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")


def client_tls_from_args(args: argparse.Namespace) -> ClientTls:
    from nodecompat.server.tls import ClientTls

    return ClientTls(args.tls_ca, args.tls_cert, args.tls_key)


def channel_credentials_from_args(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """Credentials for the flags (None: plaintext); TlsConfigError names the flag and file at fault."""
    return client_tls_from_args(args).credentials()


def tls_flags_given(args: argparse.Namespace) -> bool:
    return bool(args.tls_ca or args.tls_cert or args.tls_key)


# How gRPC words a failure to reach the peer itself (as opposed to an UNAVAILABLE the peer answered with,
# e.g. a daemon saying that a registry is unreachable, where a TLS hint would mislead).
_TRANSPORT_WORDS = ("failed to connect", "connections to all backends failing", "handshake", "socket closed",
                    "connection reset", "ssl", "tls", "end of tcp stream")


def unavailable_hint(args: argparse.Namespace, message: str = "") -> str:
    """A hint to add to an UNAVAILABLE error that came from failing to reach the peer: a TLS mismatch
    looks like a refused connection. Empty for UNAVAILABLE answers the peer itself gave."""
    if not any(w in message.lower() for w in _TRANSPORT_WORDS):
        return ""
    if not tls_flags_given(args):
        return " (if it serves TLS, give --tls-ca; if it requires mutual TLS, also --tls-cert and --tls-key)"
    if not args.tls_cert:
        return " (if it requires mutual TLS, give --tls-cert and --tls-key)"
    return " (check that its certificate is signed by --tls-ca and that it accepts --tls-cert)"
