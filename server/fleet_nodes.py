"""The aggregator's node inventory: who is in the fleet, from a nodes file, DNS and registrations.

Three sources mix freely. The nodes file (YAML or JSON list of name/address/labels) is re-read when its
stat signature changes, checked on every lookup (a stat is cheap) and by the background refresher; a bad
edit is logged and the last good list kept, so a typo never empties the fleet. DNS names are resolved
with socket.getaddrinfo (all A/AAAA records: a Kubernetes headless Service lists one per daemon pod)
every `dns_interval` seconds in the background, so a lookup never waits on a resolver. Registered nodes
hold a lease that lapses unless renewed.

One address is one node (it is one daemon), and no node may vanish silently because another claims its
address, so address collisions are settled by these rules:
- registration vs registration: a RegisterNode for an address held by a different name with a live lease
  is refused (AddressInUse, ALREADY_EXISTS on the wire) naming the holder; once that lease lapses or is
  deregistered the address is free. Renewing under the same name may move the node to a new address.
- registration vs nodes file: the file is the operator's word, so a registration of a file node's address
  under a different name is refused the same way, naming the file entry. (Refused rather than listed twice:
  ListNodes has no field to say "same daemon as", and two names for one daemon would be validated twice.)
  A registration with the file node's own name is accepted and changes nothing visible. If the file is
  later edited to claim a registered node's address, that lease is dropped with a warning and its next
  heartbeat is refused, so the daemon's log says which file entry took its address.
- registration vs DNS: a DNS record knows only an address, so the registration (a name and labels for
  that same daemon) describes it; nothing is lost. A file entry likewise describes a DNS address.

Registrations are capped (`max_registrations`, RESOURCE_EXHAUSTED past it) and names, addresses and
labels are size-checked, so a misbehaving client cannot grow a long-running aggregator without bound; a
registered address must be one others can dial (a wildcard host such as 0.0.0.0 or :: is refused).

The inventory also remembers, per address, the last contact and health seen by calls, for ListNodes;
entries of addresses that left the fleet are dropped on each lookup.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nodecompat.engine.spec_load import DUPS, LoadError, Scalar, load_document
from nodecompat.hostport import is_wildcard_host, split_address
from nodecompat.server.registration_store import RegistrationStore, StoredLease

log = logging.getLogger(__name__)

SOURCE_FILE = "file"
SOURCE_DNS = "dns"
SOURCE_REGISTERED = "registered"
_PRIORITY = {SOURCE_FILE: 0, SOURCE_REGISTERED: 1, SOURCE_DNS: 2}

MIN_LEASE_TTL = 1.0
MAX_LEASE_TTL = 3600.0
MAX_LABELS = 64
MAX_FIELD = 253  # a node name, a DNS name
MAX_LABEL_KEY = 317  # Kubernetes: a 253-character prefix, "/", a 63-character name
MAX_LABEL_VALUE = 253
# Keys and values of one node's labels together (a registration flood within --max-registrations must
# not take the aggregator's memory or ListNodes answers with it): 10,000 registrations hold <= 40 MiB.
MAX_LABEL_BYTES = 4096
MAX_ADDRESS = MAX_FIELD + 8  # [host]:port
MAX_REGISTRATIONS = 10_000
# The nodes file is the operator's, but it is re-read by a long-running process: bound what one read
# may cost. 32 MiB / 2 million YAML values is room for ~50,000 nodes with a dozen labels each.
MAX_NODES_FILE_BYTES = 32 << 20
MAX_NODES_FILE_VALUES = 2_000_000

Resolver = Callable[[str, int], list[str]]


class NodesFileError(ValueError):
    """The nodes file cannot be used; the message names the file and the entry."""


class AddressInUse(Exception):
    """A registration claims an address another node (registered or in the nodes file) holds."""


class NotRegistrant(Exception):
    """Renewal or deregistration of a live lease by someone other than its registrant."""


class NameInUse(Exception):
    """The name belongs to a node from the nodes file or DNS: a registration cannot shadow it."""


class RegistrationsFull(Exception):
    """The inventory holds `max_registrations` live leases; a new name cannot register."""


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


def _printable(text: str) -> bool:
    return text.isprintable()


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
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if not k or len(k) > MAX_LABEL_KEY or not _printable(k) or " " in k:
            raise NodesFileError(
                f"{where}: label key {k[:40]!r}: must be 1-{MAX_LABEL_KEY} printable characters without spaces"
            )
        if len(text) > MAX_LABEL_VALUE or not _printable(text):
            raise NodesFileError(
                f"{where}: label {k!r}: value must be at most {MAX_LABEL_VALUE} printable characters"
            )
        out[k] = text
    total = sum(len(k.encode()) + len(v.encode()) for k, v in out.items())
    if total > MAX_LABEL_BYTES:
        raise NodesFileError(
            f"{where}: labels take {total} bytes (keys and values together), over the limit of {MAX_LABEL_BYTES}"
        )
    return out


def name_problem(name: str) -> str:
    """Why `name` cannot name a node ("" when it can): it is printed in tables and logs, one per line."""
    if not name or len(name) > MAX_FIELD:
        return f"must be 1-{MAX_FIELD} characters"
    if not _printable(name) or name != name.strip():
        return "must be printable characters without leading or trailing spaces"
    return ""


def _plain(value: Any) -> Any:
    """load_document's tree as plain Python: Scalar -> its value, the duplicate-key marker dropped
    (the last key wins, as before). Depth is bounded by MAX_DEPTH, so the recursion is shallow."""
    if isinstance(value, Scalar):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != DUPS}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


_YAML_MARK_RE = re.compile(r'\s*in "<unicode string>", line (\d+), column (\d+)')
_LINE_RE = re.compile(r"^line (\d+): ")


def _load_error(exc: LoadError, origin: str) -> NodesFileError:
    """A LoadError as `origin:LINE[:COLUMN]: problem` (the position of the last YAML mark, if any)."""
    problem = "; ".join(exc.problems)
    marks = _YAML_MARK_RE.findall(problem)
    if marks:
        line, column = marks[-1]
        text = _YAML_MARK_RE.sub("", problem).replace("not valid YAML or JSON:", "not valid YAML/JSON:")
        return NodesFileError(f"{origin}:{line}:{column}: {text}")
    if m := _LINE_RE.match(problem):
        return NodesFileError(f"{origin}:{m.group(1)}: {problem[m.end() :]}")
    return NodesFileError(f"{origin}: {problem}")


def parse_nodes_file(text: str, origin: str) -> list[FleetNode]:
    """A list of {name, address, labels} (or {nodes: [...]}) from YAML/JSON text; located errors.

    Loaded with nodecompat.engine.spec_load (libyaml events composed without recursion, nesting depth and node
    count capped) rather than yaml.safe_load, whose recursive composer raises RecursionError on a few
    thousand nested `[`: any text gives a list of nodes or a NodesFileError, never another exception."""
    try:
        data = _plain(load_document(text, max_bytes=MAX_NODES_FILE_BYTES, max_nodes=MAX_NODES_FILE_VALUES))
    except LoadError as exc:
        raise _load_error(exc, origin) from None
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
    addresses: dict[str, int] = {}
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
        if not isinstance(name, str):
            raise NodesFileError(f"{where}: `name` must be a string")
        if problem := name_problem(name):
            raise NodesFileError(f"{where}: `name` {problem}")
        if name in seen:
            raise NodesFileError(f"{where}: name {name!r} already used by entry {seen[name]}")
        if address in addresses:  # one address is one daemon: two names for it would hide one
            j = addresses[address]
            raise NodesFileError(f"{where}: address {address} already used by entry {j} ({nodes[j].name!r})")
        seen[name] = i
        addresses[address] = i
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
    principal: str = "anonymous"  # who registered it (server/registration_auth.py); only they renew


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
        max_registrations: int = MAX_REGISTRATIONS,
        store: RegistrationStore | None = None,
    ) -> None:
        """store None: registrations live in this process only; else they are also claimed in the
        shared store (server/registration_store.py), which is authoritative for address collisions."""
        self.store = store
        self.max_registrations = max_registrations
        self.nodes_file = Path(nodes_file) if nodes_file else None
        self.dns = list(dns or [])
        self.dns_interval = dns_interval
        self.lease_ttl = lease_ttl
        self._resolve = resolver
        self._clock = clock
        self._lock = threading.Lock()
        self._file_nodes: list[FleetNode] = []
        self._file_by_address: dict[str, FleetNode] = {}
        self._file_sig: tuple[int, int, int] | None = None
        self._dns_nodes: dict[tuple[str, int], list[FleetNode]] = {}
        self._leases: dict[str, _Lease] = {}
        self._lease_by_address: dict[str, str] = {}  # address -> registered name (one holder per address)
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
            self._file_by_address = {n.address: n for n in nodes}
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

    def register(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str = "anonymous"
    ) -> float:
        """Create or renew a lease; returns the granted ttl.

        ValueError on a bad name/address/labels, AddressInUse when another node holds the address (or
        the nodes file or DNS gives it), NameInUse when the nodes file or DNS has the name,
        NotRegistrant when a live lease of the name belongs to another principal, RegistrationsFull
        when a new name would exceed `max_registrations` live leases.
        """
        if problem := name_problem(name):
            raise ValueError(f"name {problem}")
        if len(address) > MAX_ADDRESS:
            raise ValueError(f"address must be at most {MAX_ADDRESS} characters")
        try:
            host, _port = split_address(address)
        except ValueError as exc:
            raise ValueError(f"address {exc}") from None
        if is_wildcard_host(host):
            raise ValueError(
                f"address {address!r} has a wildcard host ({host or 'empty'}): it means 'every interface' to a "
                "listener and cannot be dialled; register the node's reachable address (serve --advertise)"
            )
        clean = _check_labels(dict(labels), "labels")
        granted = self.grant_ttl(ttl)
        self._reload_file()
        now = self._clock()
        with self._lock:
            holder = self._lease_by_address.get(address)
            if holder is not None and holder != name:
                lease = self._leases[holder]
                if lease.expires > now:
                    raise AddressInUse(
                        f"address {address} is held by registered node {holder!r} (lease ends in "
                        f"{lease.expires - now:.0f}s); two names cannot share one daemon's address"
                    )
                self._drop_lease(holder, "lease lapsed")
            self._check_shadowing(name, address)
            current = self._leases.get(name)
            if current is not None and current.expires > now and current.principal != principal:
                raise NotRegistrant(
                    f"node {name!r} is registered by another registrant (lease ends in "
                    f"{current.expires - now:.0f}s); only its registrant can renew it"
                )
            if name not in self._leases and len(self._leases) >= self.max_registrations:
                self._expire(now)
                if len(self._leases) >= self.max_registrations:
                    raise RegistrationsFull(
                        f"the aggregator holds {len(self._leases)} registrations, its limit; "
                        "retry later or raise the limit"
                    )
            if self.store is None:
                self._put_lease(name, address, clean, granted, principal, now)
        if self.store is not None:  # outside the lock: the store's transaction settles races across replicas
            # A move frees the old address in the store when the old etcd lease is revoked or lapses.
            self.store.claim(StoredLease(name, address, clean, principal, granted))
            with self._lock:
                self._put_lease(name, address, clean, granted, principal, self._clock())
        return granted

    def _put_lease(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str, now: float
    ) -> None:
        """Caller holds the lock."""
        previous = self._leases.get(name)
        if previous is not None and previous.node.address != address:
            self._lease_by_address.pop(previous.node.address, None)  # the node moved
        holder = self._lease_by_address.get(address)
        if holder is not None and holder != name and holder in self._leases:
            self._drop_lease(holder, "its address was taken in the shared store")
        self._leases[name] = _Lease(FleetNode(name, address, dict(labels), SOURCE_REGISTERED), now + ttl, principal)
        self._lease_by_address[address] = name
        self._contacts[address] = replace(self._contacts.get(address) or Contact(_now(), "UNKNOWN"), at=_now())

    def apply_stored(self, name: str, lease: StoredLease | None) -> None:
        """A change seen in the shared store (any replica's registration; None: it left the store)."""
        with self._lock:
            if lease is None:
                if name in self._leases:
                    self._drop_lease(name, "left the shared store (deregistered or lease lapsed)")
                return
            self._put_lease(name, lease.address, lease.labels, lease.ttl, lease.principal, self._clock())

    def deregister(self, name: str, principal: str = "anonymous") -> bool:
        """Drop `name`'s lease; NotRegistrant when a live lease belongs to another principal."""
        with self._lock:
            lease = self._leases.get(name)
            if lease is None:
                return False
            if lease.principal != principal and lease.expires > self._clock():
                raise NotRegistrant(f"node {name!r} was registered by another registrant; only it can deregister")
            self._drop_lease(name, "")
        if self.store is not None:
            self.store.release(name, lease.node.address)
        return True

    def _check_shadowing(self, name: str, address: str) -> None:
        """A registration never shadows a node of the nodes file or DNS (name or address). Caller locks."""
        file_node = self._file_by_address.get(address)
        if file_node is not None and file_node.name != name:
            raise AddressInUse(
                f"address {address} is node {file_node.name!r} in the nodes file {self.nodes_file}; "
                f"register under that name or use another address"
            )
        if file_node is None and any(n.name == name for n in self._file_nodes):
            raise NameInUse(f"node {name!r} is in the nodes file {self.nodes_file}; a registration cannot shadow it")
        for (dns_host, dns_port), nodes in self._dns_nodes.items():
            for n in nodes:
                reported = (c.reported_name if (c := self._contacts.get(n.address)) else "") or n.name
                if n.address == address or reported == name:
                    raise NameInUse(
                        f"node {reported!r} ({n.address}) comes from DNS ({dns_host}:{dns_port}); a registration "
                        "cannot shadow it (same name or address)"
                    )

    def registrations(self) -> int:
        """Leases held, lapsed ones included until the next lookup drops them."""
        with self._lock:
            return len(self._leases)

    def contacts(self) -> int:
        """Addresses with a remembered contact (for tests of pruning)."""
        with self._lock:
            return len(self._contacts)

    def _drop_lease(self, name: str, why: str) -> None:
        """Caller holds the lock."""
        lease = self._leases.pop(name)
        if self._lease_by_address.get(lease.node.address) == name:
            del self._lease_by_address[lease.node.address]
        if why:
            log.info("node %s (%s) left the fleet: %s", name, lease.node.address, why)

    def _expire(self, now: float) -> None:
        """Drop lapsed leases and leases whose address the nodes file now gives another name. Caller locks."""
        for name, lease in list(self._leases.items()):
            if lease.expires <= now:
                self._drop_lease(name, "lease lapsed")
                continue
            try:
                self._check_shadowing(name, lease.node.address)
            except (AddressInUse, NameInUse) as exc:
                log.warning("registered node %s: lease dropped: %s", name, exc)
                self._drop_lease(name, "")
                continue
            file_node = self._file_by_address.get(lease.node.address)
            if file_node is not None and file_node.name != name:
                log.warning(
                    "registered node %s: its address %s is now node %r in the nodes file; lease dropped "
                    "(its next heartbeat will be refused with the reason)",
                    name,
                    lease.node.address,
                    file_node.name,
                )
                self._drop_lease(name, "")

    # -- lookups -----------------------------------------------------------------------------------
    def nodes(self, selector: Mapping[str, str] | None = None) -> list[FleetNode]:
        """Current members matching selector, sorted by name; one node per address (rules: module doc)."""
        self._reload_file()
        now = self._clock()
        by_address: dict[str, FleetNode] = {}
        with self._lock:
            self._expire(now)
            candidates = [
                *self._file_nodes,
                *(lease.node for lease in self._leases.values()),
                *(n for nodes in self._dns_nodes.values() for n in nodes),
            ]
            for n in candidates:
                cur = by_address.get(n.address)
                if cur is None or _PRIORITY[n.source] < _PRIORITY[cur.source]:
                    by_address[n.address] = n
            for gone in [a for a in self._contacts if a not in by_address]:  # departed nodes
                del self._contacts[gone]
            reported = {a: c.reported_name for a, c in self._contacts.items() if c.reported_name}
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
        if self.store is not None:
            self.store.start(self.apply_stored)

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
        if self.store is not None:
            self.store.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _now() -> datetime:
    return datetime.now(UTC)
