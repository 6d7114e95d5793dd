"""Which registry hosts a server may connect to, and over which scheme (the registry allow-list).

The daemon and the aggregator fetch the image a *caller* names, so without a policy any caller could
make them connect to any host and port (SSRF, port scanning through error texts). The servers
therefore take `--allowed-registries PATTERN...`; the default is an EMPTY list: no registry is
reachable by reference until the operator names some (inline specs always work). The CLI run by
the operator (`nodecompat validate --image`, `attach`) has no policy, like NFD's own CLI.

Pattern syntax (docs/security.md, "Registry allow-list"):
  [http://]HOST[:PORT]
- HOST is a DNS name, an IPv4 address or a bracketed IPv6 address, compared case-insensitively.
  `*` inside HOST matches one or more characters within one DNS label (never a '.' or ':'):
  `*.example.com` matches `r.example.com`, not `example.com` nor `a.b.example.com`;
  `10.0.0.*` matches `10.0.0.7`. A HOST that is exactly `*` matches every host.
- PORT is a number or `*` (any port, or none). Without PORT the pattern matches only references
  that name no port (the scheme's default: 443 for HTTPS, 80 for plain HTTP) or name 443/80.
- A pattern starting with `http://` also allows plain HTTP to its hosts when the caller asks for
  it (`plain_http: true`); without it only HTTPS is used and a caller's plain_http is refused.
  (`https://HOST` is accepted and means the same as `HOST`.)
- `docker.io` also covers Docker Hub's API host registry-1.docker.io.
What is checked: the registry host of the reference before any connection, every redirect target
(redirects are followed only to allowed hosts, never carrying credentials to another host), and a
token server's realm URL (it is a host the registry names, so it is checked like a redirect).
Hand-written: a dozen lines of matching; fnmatch's `*` would cross label boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nodecompat.oci.errors import PermissionDeniedError

ALLOW_FLAG = "--allowed-registries"
_HOST_RE = re.compile(r"^(\*|[A-Za-z0-9*]([A-Za-z0-9*.-]*[A-Za-z0-9*])?|\[[0-9A-Fa-f:.*]+\])$")
_HUB_ALIASES = {"docker.io": "registry-1.docker.io"}
DEFAULT_PORTS = {"https": 443, "http": 80}


def split_host_port(hostport: str) -> tuple[str, str]:
    """("host", "port" or "") of `host[:port]` / `[v6]:port`, host lower-cased."""
    text = hostport.strip()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.partition(":")
    return host.lower(), port


_NOT_IN_HOST = re.compile(r"[@/\\?#%\s]")


def _plain_host_port(hostport: str, host: str, port: str) -> bool:
    """Whether `hostport` is exactly HOST[:DIGITS] (URL authority without userinfo), so that the host and
    port checked are the ones a URL parser connects to. A netloc such as `allowed:1@evil` or
    `[::1]@evil` (userinfo; urllib3 connects to `evil`) or a non-numeric port is never allowed."""
    if _NOT_IN_HOST.search(hostport) or (port and not (port.isdigit() and len(port) <= 5)):
        return False
    text = hostport.strip()
    if text.startswith("["):
        return text.lower() in (host, f"{host}:{port}")
    return ":" not in host


@dataclass(frozen=True)
class RegistryPattern:
    """One parsed allow-list entry."""

    text: str
    host: re.Pattern[str]
    port: str  # "" (default port only), "*" (any) or digits
    plain_http: bool

    def matches(self, host: str, port: str, scheme: str) -> bool:
        """Whether host/port (port "" = the scheme's default) over scheme is allowed by this entry."""
        if scheme == "http" and not self.plain_http:
            return False
        if self.port == "*":
            port_ok = True
        elif self.port == "":
            port_ok = port in ("", str(DEFAULT_PORTS[scheme]))
        else:
            port_ok = port == self.port or (port == "" and self.port == str(DEFAULT_PORTS[scheme]))
        return port_ok and bool(self.host.fullmatch(host))


def parse_pattern(text: str) -> RegistryPattern:
    """Parse one `[http://]HOST[:PORT]` pattern; ValueError with the reason."""
    raw = text.strip()
    plain = False
    lowered = raw.lower()
    if lowered.startswith("http://"):
        plain, raw = True, raw[len("http://"):]
    elif lowered.startswith("https://"):
        raw = raw[len("https://"):]
    raw = raw.rstrip("/")
    if not raw or "/" in raw or "@" in raw:
        raise ValueError(f"registry pattern {text!r}: expected [http://]HOST[:PORT], e.g. "
                         f"registry.example.com, *.example.com:5000 or http://127.0.0.1:5000")
    host, port = split_host_port(raw)
    if not _HOST_RE.match(host) or "**" in host:
        raise ValueError(f"registry pattern {text!r}: {host!r} is not a host name, address or glob")
    if port and port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"registry pattern {text!r}: port {port!r} is not 1-65535 or *")
    if host == "*":
        rx = re.compile(r".+")
    else:
        rx = re.compile("".join("[^.:]+" if ch == "*" else re.escape(ch) for ch in host))
    return RegistryPattern(text.strip(), rx, port, plain)


@dataclass(frozen=True)
class RegistryPolicy:
    """The operator's allow-list. `patterns` empty = no registry allowed (the servers' default)."""

    patterns: tuple[RegistryPattern, ...] = ()
    flag: str = ALLOW_FLAG
    texts: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, texts: Iterable[str], flag: str = ALLOW_FLAG) -> RegistryPolicy:
        """From flag values (each may hold several comma/space-separated patterns); ValueError naming flag."""
        items = [t for text in texts for t in re.split(r"[,\s]+", text) if t]
        try:
            patterns = tuple(parse_pattern(t) for t in items)
        except ValueError as exc:
            raise ValueError(f"{flag}: {exc}") from None
        return cls(patterns, flag, tuple(items))

    def allows(self, host: str, port: str, scheme: str) -> bool:
        host = host.lower()
        hosts = {host} | {alias for alias, api in _HUB_ALIASES.items() if api == host}
        return any(p.matches(h, port, scheme) for p in self.patterns for h in hosts)

    def check(self, hostport: str, scheme: str, what: str = "registry") -> None:
        """Raise PermissionDeniedError (before any connection) unless hostport over scheme is allowed.

        The message is the same whatever is (or is not) listening there: it tells nothing about the
        target, only what the policy says and which flag changes it."""
        host, port = split_host_port(hostport)
        if _plain_host_port(hostport, host, port) and self.allows(host, port, scheme):
            return
        shown = hostport if len(hostport) <= 261 else hostport[:261] + "..."
        if scheme == "http" and self.allows(host, port, "https"):
            raise PermissionDeniedError(
                f"plain HTTP to {what} {shown} is not allowed by this server's registry policy "
                f"({self.flag} lists it for HTTPS only); the operator allows plain HTTP with "
                f"{self.flag} http://{shown}"
            )
        listed = "no registries are allowed" if not self.patterns else f"allowed: {', '.join(self.texts[:8])}" + (
            f" and {len(self.texts) - 8} more" if len(self.texts) > 8 else "")
        raise PermissionDeniedError(
            f"{what} {shown} is not in this server's registry allow-list ({listed}); "
            f"the operator can add it with {self.flag} {'http://' if scheme == 'http' else ''}{shown}"
        )


def describe(policy: RegistryPolicy | None) -> str:
    """One line for a server's start-up log."""
    if policy is None:
        return "registry policy: none (any registry)"
    if not policy.patterns:
        return f"registry policy: no registry reachable by reference ({policy.flag} not given)"
    return f"registry policy: {', '.join(policy.texts)}"


def parse_flag_values(values: Sequence[str] | None) -> RegistryPolicy:
    """RegistryPolicy from argparse's list (None = flag not given = allow nothing)."""
    return RegistryPolicy.parse(values or ())
