"""The aggregator's node inventory: who is in the fleet, from a nodes file, DNS and registrations.

Three sources mix freely. The nodes file (YAML or JSON list of name/address/labels) is re-read when its
stat signature changes, checked on every lookup (a stat is cheap) and by the background refresher; a bad
edit is logged and the last good list kept, so a typo never empties the fleet. DNS names are resolved
with socket.getaddrinfo (all A/AAAA records: a Kubernetes headless Service lists one per daemon pod)
every `dns_interval` seconds in the background, so a lookup never waits on a resolver. Registered nodes
hold a lease that lapses unless renewed. When one address comes from several sources it is one node,
preferring file over registration over DNS (the richer the metadata, the better).

The inventory also remembers, per address, the last contact and health seen by calls, for ListNodes.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

SOURCE_FILE = "file"
SOURCE_DNS = "dns"
SOURCE_REGISTERED = "registered"
_PRIORITY = {SOURCE_FILE: 0, SOURCE_REGISTERED: 1, SOURCE_DNS: 2}

MIN_LEASE_TTL = 1.0
MAX_LEASE_TTL = 3600.0
MAX_LABELS = 64
MAX_FIELD = 253

Resolver = Callable[[str, int], list[str]]


class NodesFileError(ValueError):
    """The nodes file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class FleetNode:
    name: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = SOURCE_FILE

    def matches(self, selector: Mapping[str, str]) -> bool:
        return all(self.labels.get(k) == v for k, v in selector.items())


@dataclass
class Contact:
    """What the last call or health check to an address saw."""

    at: datetime
    health: str
    reported_name: str = ""


@dataclass(frozen=True)
class NodeView:
    node: FleetNode
    last_contact: datetime | None
    health: str


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError with the reason otherwise."""
    address = address.strip()
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{address!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{address!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    if not host:
        raise ValueError(f"{address!r}: empty host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: port must be 1-65535")
    return host, int(port_text)


def system_resolver(host: str, port: int) -> list[str]:
    """All A/AAAA records of host as HOST:PORT addresses, in resolver order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for family, _t, _p, _c, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = format_address(str(sockaddr[0]), port)
        if addr not in out:
            out.append(addr)
    return out


def _check_labels(labels: object, where: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise NodesFileError(f"{where}: `labels` must be a mapping of strings, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise NodesFileError(f"{where}: at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float | bool):
            raise NodesFileError(f"{where}: label {k!r}: keys and values must be strings")
        out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def parse_nodes_file(text: str, origin: str) -> list[FleetNode]:
    """A list of {name, address, labels} (or {nodes: [...]}) from YAML/JSON text; located errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark is not None else origin
        raise NodesFileError(f"{where}: not valid YAML/JSON: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return []
    if isinstance(data, Mapping):
        if set(data) != {"nodes"}:
            raise NodesFileError(f"{origin}: expected a list of nodes or a mapping with only `nodes`")
        data = data["nodes"] or []
    if not isinstance(data, list):
        raise NodesFileError(f"{origin}: expected a list of nodes, got {type(data).__name__}")
    nodes: list[FleetNode] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{origin}: entry {i}"
        if not isinstance(entry, Mapping):
            raise NodesFileError(f"{where}: expected a mapping with name/address/labels")
        unknown = set(entry) - {"name", "address", "labels"}
        if unknown:
            raise NodesFileError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        address = entry.get("address")
        if not isinstance(address, str) or not address:
            raise NodesFileError(f"{where}: `address` (HOST:PORT) is required")
        try:
            split_address(address)
        except ValueError as exc:
            raise NodesFileError(f"{where}: address {exc}") from None
        name = entry.get("name", address)
        if not isinstance(name, str) or not name or len(name) > MAX_FIELD:
            raise NodesFileError(f"{where}: `name` must be a non-empty string of at most {MAX_FIELD} characters")
        if name in seen:
            raise NodesFileError(f"{where}: name {name!r} already used by entry {seen[name]}")
        seen[name] = i
        nodes.append(FleetNode(name, address, _check_labels(entry.get("labels"), where), SOURCE_FILE))
    return nodes


def parse_dns_target(text: str) -> tuple[str, int]:
    """`--dns NAME:PORT` -> (name, port)."""
    try:
        return split_address(text)
    except ValueError as exc:
        raise ValueError(f"--dns {exc}") from None


@dataclass
class _Lease:
    node: FleetNode
    expires: float


class NodeInventory:
    """Thread-safe fleet membership. start() runs the background refresher; nodes() is the lookup."""

    def __init__(
        self,
        *,
        nodes_file: str | Path | None = None,
        dns: list[tuple[str, int]] | None = None,
        dns_interval: float = 30.0,
        lease_ttl: float = 30.0,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nodes_file = Path(nodes_file) if nodes_file else None
        self.dns = list(dns or [])
        self.dns_interval = dns_interval
        self.lease_ttl = lease_ttl
        self._resolve = resolver
        self._clock = clock
        self._lock = threading.Lock()
        self._file_nodes: list[FleetNode] = []
        self._file_sig: tuple[int, int, int] | None = None
        self._dns_nodes: dict[tuple[str, int], list[FleetNode]] = {}
        self._leases: dict[str, _Lease] = {}
        self._contacts: dict[str, Contact] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.file_error: str = ""

    # -- sources -----------------------------------------------------------------------------------
    def load(self) -> None:
        """First load: a bad nodes file raises NodesFileError (later bad edits only log)."""
        if self.nodes_file is not None:
            self._reload_file(strict=True)
        self.resolve_dns()

    def _file_signature(self) -> tuple[int, int, int] | None:
        assert self.nodes_file is not None
        try:
            st = self.nodes_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload_file(self, strict: bool = False) -> None:
        if self.nodes_file is None:
            return
        sig = self._file_signature()
        with self._lock:
            if sig == self._file_sig and (sig is not None or not strict):
                return
        try:
            if sig is None:
                raise NodesFileError(f"{self.nodes_file}: cannot read (missing?)")
            text = self.nodes_file.read_text(encoding="utf-8")
            nodes = parse_nodes_file(text, str(self.nodes_file))
        except (OSError, UnicodeDecodeError, NodesFileError) as exc:
            msg = str(exc) if isinstance(exc, NodesFileError) else f"{self.nodes_file}: cannot read: {exc}"
            if strict:
                raise NodesFileError(msg) from None
            with self._lock:
                if self._file_sig != sig:
                    log.error(
                        "nodes file not reloaded, keeping the previous %d node(s): %s",
                        len(self._file_nodes),
                        msg,
                    )
                self._file_sig = sig
                self.file_error = msg
            return
        with self._lock:
            self._file_nodes = nodes
            self._file_sig = sig
            self.file_error = ""
        log.info("nodes file %s: %d node(s)", self.nodes_file, len(nodes))

    def resolve_dns(self) -> None:
        """Re-resolve every --dns name; a failed lookup keeps that name's previous addresses."""
        for host, port in self.dns:
            try:
                addrs = self._resolve(host, port)
            except OSError as exc:
                log.warning(
                    "DNS %s:%d: %s (keeping %d previous address(es))",
                    host,
                    port,
                    exc,
                    len(self._dns_nodes.get((host, port), [])),
                )
                continue
            nodes = [FleetNode(a, a, {}, SOURCE_DNS) for a in addrs]
            with self._lock:
                self._dns_nodes[(host, port)] = nodes

    # -- registration ------------------------------------------------------------------------------
    def grant_ttl(self, requested: float) -> float:
        if not requested or math.isnan(requested) or requested <= 0:
            return self.lease_ttl
        return min(max(requested, MIN_LEASE_TTL), max(self.lease_ttl, MAX_LEASE_TTL))

    def register(self, name: str, address: str, labels: Mapping[str, str], ttl: float) -> float:
        """Create or renew a lease; returns the granted ttl. ValueError on a bad name/address/labels."""
        if not name or len(name) > MAX_FIELD:
            raise ValueError(f"name must be 1-{MAX_FIELD} characters")
        try:
            split_address(address)
        except ValueError as exc:
            raise ValueError(f"address {exc}") from None
        clean = _check_labels(dict(labels), "labels")
        granted = self.grant_ttl(ttl)
        with self._lock:
            self._leases[name] = _Lease(FleetNode(name, address, clean, SOURCE_REGISTERED), self._clock() + granted)
            self._contacts[address] = replace(self._contacts.get(address) or Contact(_now(), "UNKNOWN"), at=_now())
        return granted

    def deregister(self, name: str) -> bool:
        with self._lock:
            return self._leases.pop(name, None) is not None

    # -- lookups -----------------------------------------------------------------------------------
    def nodes(self, selector: Mapping[str, str] | None = None) -> list[FleetNode]:
        """Current members matching selector, sorted by name; one node per address."""
        self._reload_file()
        now = self._clock()
        with self._lock:
            for name in [n for n, lease in self._leases.items() if lease.expires <= now]:
                log.info("lease of node %s lapsed", name)
                del self._leases[name]
            candidates = [
                *self._file_nodes,
                *(lease.node for lease in self._leases.values()),
                *(n for nodes in self._dns_nodes.values() for n in nodes),
            ]
            reported = {a: c.reported_name for a, c in self._contacts.items() if c.reported_name}
        by_address: dict[str, FleetNode] = {}
        for n in candidates:
            cur = by_address.get(n.address)
            if cur is None or _PRIORITY[n.source] < _PRIORITY[cur.source]:
                by_address[n.address] = n
        out = []
        for n in by_address.values():
            if n.source == SOURCE_DNS and n.address in reported:  # DNS only knows addresses
                n = replace(n, name=reported[n.address])
            if n.matches(selector or {}):
                out.append(n)
        return sorted(out, key=lambda n: (n.name, n.address))

    def views(self, selector: Mapping[str, str] | None = None) -> list[NodeView]:
        nodes = self.nodes(selector)
        with self._lock:
            return [
                NodeView(n, c.at if (c := self._contacts.get(n.address)) else None, c.health if c else "UNKNOWN")
                for n in nodes
            ]

    def record_contact(self, address: str, health: str, reported_name: str = "") -> None:
        with self._lock:
            prev = self._contacts.get(address)
            self._contacts[address] = Contact(_now(), health, reported_name or (prev.reported_name if prev else ""))

    # -- background refresh ------------------------------------------------------------------------
    def start(self, file_interval: float = 2.0) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, args=(file_interval,), name="fleet-inventory", daemon=True)
        self._thread.start()

    def _loop(self, file_interval: float) -> None:
        next_dns = self._clock() + self.dns_interval
        while not self._stop.wait(min(file_interval, self.dns_interval)):
            try:
                self._reload_file()
                if self.dns and self._clock() >= next_dns:
                    self.resolve_dns()
                    next_dns = self._clock() + self.dns_interval
            except Exception:  # keep refreshing whatever one round does
                log.exception("inventory refresh failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _now() -> datetime:
    return datetime.now(UTC)
