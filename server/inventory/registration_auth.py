"""Who may register which node name with the aggregator (fleet membership, docs/security.md).

RegisterNode/DeregisterNode change what the aggregator — and everything that trusts it — believes
about the fleet, so a registration is authenticated and bound to an identity:

- mTLS (the aggregator has --tls-ca, so every caller presents a certificate its CA signed): the
  certificate must name the node. The rule: the registered name equals one of the certificate's
  SAN DNS names (case-insensitive), or the optional mapping file (--registration-identities) grants
  one of the certificate's identities that name. Identities are written `dns:NAME` or `uri:URI`
  (a SPIFFE ID, say); the file is YAML/JSON `{node-name: [identity, ...]}`. The subject CN is never
  used (RFC 6125 deprecates it for identity).
- Shared token (--registration-token-file on the aggregator and on `serve`): the daemon sends the
  file's content as call metadata (`x-nodecompat-registration-token`), compared in constant time
  (hmac.compare_digest). A token proves fleet membership, not which node; so each daemon also sends
  a random per-process lease key (`x-nodecompat-lease-key`) and only a caller presenting the same key
  can renew or deregister that lease while it is live.
- Neither: registration is disabled (PERMISSION_DENIED saying which flags enable it), unless the
  operator passes --allow-unauthenticated-registration (then the lease key alone binds renewals).
With mTLS and a token file both, both are required. Under mTLS the lease is bound to the
certificate's identities (any certificate allowed to claim the name may renew it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TOKEN_METADATA = "x-nodecompat-registration-token"
LEASE_KEY_METADATA = "x-nodecompat-lease-key"
MAX_TOKEN_BYTES = 4096
MAX_LEASE_KEY = 128
MAX_IDENTITY_FILE_BYTES = 4 << 20


class RegistrationDenied(Exception):
    """The caller may not register (or renew/deregister) this name; `.unauthenticated` = no proof at all."""

    def __init__(self, message: str, *, unauthenticated: bool = False) -> None:
        super().__init__(message)
        self.unauthenticated = unauthenticated


@dataclass(frozen=True)
class Caller:
    """What the aggregator knows about one RegisterNode/DeregisterNode caller."""

    identities: frozenset[str] = frozenset()  # "dns:..." / "uri:..." from a verified client certificate
    token: bytes | None = None
    lease_key: str = ""


def read_token_file(path: str | Path, flag: str = "--registration-token-file") -> bytes:
    """The token in a file (surrounding whitespace stripped); ValueError naming the flag."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    token = raw.strip()
    if len(raw) > MAX_TOKEN_BYTES:
        raise ValueError(f"{flag} {path}: larger than {MAX_TOKEN_BYTES} bytes")
    if len(token) < 16:
        raise ValueError(f"{flag} {path}: the token must be at least 16 bytes (e.g. `openssl rand -hex 32`)")
    if any(b < 0x21 or b > 0x7E for b in token):
        raise ValueError(f"{flag} {path}: the token must be printable ASCII without spaces (it is sent as metadata)")
    return token


def load_identity_map(path: str | Path) -> dict[str, frozenset[str]]:
    """{node name: identities} from a YAML/JSON mapping file; ValueError naming the file."""
    from nodecompat.engine.spec_load import LoadError, load_document

    flag = "--registration-identities"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{flag} {path}: cannot read: {exc}") from None
    try:
        data = load_document(text, max_bytes=MAX_IDENTITY_FILE_BYTES)
    except LoadError as exc:
        raise ValueError(f"{flag} {path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{flag} {path}: expected a mapping of node name -> list of identities")
    out: dict[str, frozenset[str]] = {}
    for name, ids in data.items():
        if not isinstance(name, str) or not isinstance(ids, Sequence) or isinstance(ids, str):
            raise ValueError(f"{flag} {path}: {name!r}: expected a list of identities (dns:NAME or uri:URI)")
        clean = []
        for ident in ids:
            if not isinstance(ident, str) or not ident.startswith(("dns:", "uri:")) or len(ident) < 5:
                raise ValueError(f"{flag} {path}: {name!r}: identity {ident!r} is not dns:NAME or uri:URI")
            kind, _, value = ident.partition(":")
            clean.append(f"{kind}:{value.lower() if kind == 'dns' else value}")
        out[name] = frozenset(clean)
    return out


def certificate_identities(auth_context: Mapping[str, Sequence[bytes]]) -> frozenset[str]:
    """`dns:`/`uri:` identities of a verified peer certificate, from gRPC's auth context
    (peer_dns / peer_uri, falling back to x509_subject_alternative_name as DNS names)."""
    out: set[str] = set()
    for value in auth_context.get("peer_dns", ()):
        out.add("dns:" + value.decode("utf-8", "replace").lower())
    for value in auth_context.get("peer_uri", ()):
        out.add("uri:" + value.decode("utf-8", "replace"))
    if not out:
        for value in auth_context.get("x509_subject_alternative_name", ()):
            text = value.decode("utf-8", "replace")
            out.add(("uri:" + text) if "://" in text or text.startswith("spiffe:") else "dns:" + text.lower())
    return frozenset(out)


@dataclass(frozen=True)
class RegistrationPolicy:
    """How RegisterNode callers are authenticated; see the module docstring for the rules."""

    mtls: bool = False
    token: bytes | None = field(default=None, repr=False)
    identity_map: Mapping[str, frozenset[str]] = field(default_factory=dict)
    allow_unauthenticated: bool = False

    @property
    def enabled(self) -> bool:
        return self.mtls or self.token is not None or self.allow_unauthenticated

    def describe(self) -> str:
        parts = []
        if self.mtls:
            parts.append("client certificate naming the node (SAN DNS"
                         + (", or --registration-identities" if self.identity_map else "") + ")")
        if self.token is not None:
            parts.append("shared token (--registration-token-file)")
        if not parts:
            return "registration: unauthenticated (--allow-unauthenticated-registration)" if \
                self.allow_unauthenticated else "registration: disabled"
        return "registration: " + " and ".join(parts)

    def principal(self, caller: Caller, name: str) -> str:
        """Check caller may act for `name`; return the key a lease is bound to. RegistrationDenied if not."""
        if not self.enabled:
            raise RegistrationDenied(
                "registration is disabled on this aggregator: start it with --tls-ca (mTLS: the client "
                "certificate must name the node), --registration-token-file, or "
                "--allow-unauthenticated-registration"
            )
        if self.token is not None:
            if caller.token is None:
                raise RegistrationDenied(
                    f"registration needs the fleet's shared token (metadata {TOKEN_METADATA}; "
                    "serve --registration-token-file)", unauthenticated=True)
            if not hmac.compare_digest(caller.token, self.token):
                raise RegistrationDenied("the registration token does not match the aggregator's", unauthenticated=True)
        if self.mtls:
            allowed = {f"dns:{name.lower()}"} | set(self.identity_map.get(name, ()))
            if not caller.identities & allowed:
                shown = ", ".join(sorted(caller.identities)[:6]) or "none"
                raise RegistrationDenied(
                    f"the client certificate does not name node {name!r} (its identities: {shown}); a node "
                    f"registers under a SAN DNS name of its certificate, or a name --registration-identities "
                    f"grants it")
            return f"cert:{name}"  # any certificate allowed to claim the name may renew it
        if caller.lease_key:
            return "key:" + hashlib.sha256(caller.lease_key.encode()).hexdigest()
        if self.token is not None:
            raise RegistrationDenied(
                f"registration with a shared token needs a lease key (metadata {LEASE_KEY_METADATA}: a random "
                "string kept for the daemon's life), so that only this registrant can renew or deregister"
            )
        return "anonymous"


def caller_of(context: object) -> Caller:
    """Caller from a gRPC ServicerContext (sync or aio): metadata and the verified peer certificate."""
    metadata = dict(getattr(context, "invocation_metadata")() or ())  # noqa: B009 - sync and aio contexts
    token = metadata.get(TOKEN_METADATA)
    key = metadata.get(LEASE_KEY_METADATA, "")
    auth = getattr(context, "auth_context")() or {}  # noqa: B009
    return Caller(
        identities=certificate_identities(auth),
        token=token.encode() if isinstance(token, str) else token if isinstance(token, bytes) else None,
        lease_key=key[:MAX_LEASE_KEY] if isinstance(key, str) else "",
    )
