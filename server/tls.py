"""TLS and mutual TLS credentials for every nodecompat server and client, from PEM files.

One place turns `--tls-cert/--tls-key/--tls-ca` into gRPC credentials so the node daemon, the aggregator,
the lease keeper and the CLI clients agree on the rules: a server given a CA *requires* a client
certificate signed by it (mutual TLS); a client given a certificate and key presents them. Files are
read here so a missing or unreadable file is reported by flag and path, not as an opaque handshake error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsConfigError(ValueError):
    """A TLS file is missing, unreadable, not PEM, or a required companion flag is absent."""


def _read_pem(path: str | Path, flag: str) -> bytes:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} {p}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{flag} {p}: not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(
    cert: str | Path, key: str | Path | None, ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """Server TLS from a certificate chain and key; with `ca`, clients must show a certificate it signed."""
    if not cert or not key:
        raise TlsConfigError("TLS needs both --tls-cert and --tls-key")
    chain = _read_pem(cert, "--tls-cert")
    private_key = _read_pem(key, "--tls-key")
    root = _read_pem(ca, "--tls-ca") if ca else None
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=root, require_client_auth=root is not None
    )


def channel_credentials(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: verify the server with `ca` (system roots when None); present cert+key when given."""
    if bool(cert) != bool(key):
        raise TlsConfigError("a client certificate needs both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca, "--tls-ca") if ca else None,
        private_key=_read_pem(key, "--tls-key") if key else None,
        certificate_chain=_read_pem(cert, "--tls-cert") if cert else None,
    )


@dataclass(frozen=True)
class ClientTls:
    """The TLS flags of a client (all empty: plaintext)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.ca or self.cert)

    def credentials(self) -> grpc.ChannelCredentials | None:
        return channel_credentials(self.ca, self.cert, self.key) if self.enabled else None


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, object]] | None = None
) -> grpc.Channel:
    """A plaintext or TLS channel to `address`."""
    opts = list(options or [])
    if credentials is None:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, credentials, options=opts)
