"""The aggregator's node inventory: who is in the fleet, from a nodes file, DNS and registrations.

Three sources mix freely. The nodes file (YAML or JSON list of name/address/labels) is re-read when its
stat signature changes, checked on every lookup (a stat is cheap) and by the background refresher; a bad
edit is logged and the last good list kept, so a typo never empties the fleet. DNS names are resolved
with socket.getaddrinfo (all A/AAAA records: a Kubernetes headless Service lists one per daemon pod)
every `dns_interval` seconds in the background, so a lookup never waits on a resolver. Registered nodes
hold a lease that lapses unless renewed (server/inventory/fleet_leases.py).

One address is one node (it is one daemon): registration vs registration, vs the nodes file and vs
DNS collisions are settled by the rules written once in server/inventory/fleet_leases.py's docstring.

Registrations are capped (`max_registrations`, RESOURCE_EXHAUSTED past it) and names, addresses and
labels are size-checked, so a misbehaving client cannot grow a long-running aggregator without bound; a
registered address must be one others can dial (a wildcard host such as 0.0.0.0 or :: is refused).

The node model, the nodes-file parser, DNS resolution and the size limits are server/inventory/fleet_members.py;
their names are re-exported here. The inventory also remembers, per address, the last contact and
health seen by calls, for ListNodes; entries of addresses that left the fleet are dropped on each lookup.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from nodecompat.hostport import is_wildcard_host, split_address
from nodecompat.server.inventory.fleet_leases import TTL_STAGGER, LeaseRegistry, _Lease
from nodecompat.server.inventory.fleet_members import (
    MAX_ADDRESS,
    MAX_FIELD,
    MAX_LABEL_BYTES,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_LEASE_TTL,
    MAX_NODES_FILE_BYTES,
    MAX_NODES_FILE_VALUES,
    MAX_REGISTRATIONS,
    MIN_LEASE_TTL,
    SOURCE_DNS,
    SOURCE_FILE,
    SOURCE_PRIORITY,
    SOURCE_REGISTERED,
    AddressInUse,
    Contact,
    FleetNode,
    NameInUse,
    NodesFileError,
    NodeView,
    NotRegistrant,
    RegistrationsFull,
    Resolver,
    check_labels,
    format_address,
    name_problem,
    parse_dns_target,
    parse_nodes_file,
    system_resolver,
    utc_now,
)
from nodecompat.server.inventory.registration_rate import RegistrationRate
from nodecompat.server.inventory.registration_store import RegistrationStore

__all__ = [
    "MAX_ADDRESS",
    "MAX_FIELD",
    "MAX_LABELS",
    "MAX_LABEL_BYTES",
    "MAX_LABEL_KEY",
    "MAX_LABEL_VALUE",
    "MAX_LEASE_TTL",
    "MAX_NODES_FILE_BYTES",
    "MAX_NODES_FILE_VALUES",
    "MAX_REGISTRATIONS",
    "MIN_LEASE_TTL",
    "SOURCE_DNS",
    "SOURCE_FILE",
    "SOURCE_PRIORITY",
    "SOURCE_REGISTERED",
    "AddressInUse",
    "Contact",
    "FleetNode",
    "LeaseRegistry",
    "NameInUse",
    "NodeInventory",
    "NodeView",
    "NodesFileError",
    "NotRegistrant",
    "RegistrationsFull",
    "Resolver",
    "check_labels",
    "format_address",
    "is_wildcard_host",
    "name_problem",
    "parse_dns_target",
    "parse_nodes_file",
    "split_address",
    "system_resolver",
    "utc_now",
]

log = logging.getLogger(__name__)


def _by_name(n: FleetNode) -> tuple[str, str]:
    return (n.name, n.address)


class NodeInventory(LeaseRegistry):
    """Thread-safe fleet membership. start() runs the background refresher; nodes() is the lookup."""

    def __init__(
        self,
        *,
        nodes_file: str | Path | None = None,
        dns: list[tuple[str, int]] | None = None,
        dns_interval: float = 30.0,
        lease_ttl: float = 30.0,
        max_heartbeats_per_second: float = 0.0,
        resolver: Resolver = system_resolver,
        clock: Callable[[], float] = time.monotonic,
        max_registrations: int = MAX_REGISTRATIONS,
        store: RegistrationStore | None = None,
    ) -> None:
        """store None: registrations live in this process only; else they are also claimed in the
        shared store (server/inventory/registration_store.py), which is authoritative for address collisions."""
        self.store = store
        self.max_registrations = max_registrations
        self.nodes_file = Path(nodes_file) if nodes_file else None
        self.dns = list(dns or [])
        self.dns_interval = dns_interval
        self.lease_ttl = lease_ttl
        self.max_heartbeats_per_second = max_heartbeats_per_second  # leases scaled with their number (grant_ttl)
        self.ttl_stagger = TTL_STAGGER
        self._resolve = resolver
        self._clock = clock
        self._lock = threading.Lock()
        self._file_nodes: list[FleetNode] = []
        self._file_by_address: dict[str, FleetNode] = {}
        self._file_sig: tuple[int, int, int] | None = None
        self._dns_nodes: dict[tuple[str, int], list[FleetNode]] = {}
        self._leases: dict[str, _Lease] = {}
        self._new_rate = RegistrationRate()  # new registrations a second (grant_ttl: a burst's leases)
        self.lease_changes = 0  # leases put (not renewals) or dropped: a snapshot writer's signature
        self.lease_puts = 0  # leases put or renewed (the first health checks' burst measure: first_check.py)
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

    def _file_changed(self) -> bool:
        """Whether the nodes file's stat signature differs from the one last read (a stat, no lock)."""
        return self.nodes_file is not None and self._file_signature() != self._file_sig

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
    def contacts(self) -> int:
        """Addresses with a remembered contact (for tests of pruning)."""
        with self._lock:
            return len(self._contacts)

    # -- lookups -----------------------------------------------------------------------------------
    def nodes(self, selector: Mapping[str, str] | None = None) -> list[FleetNode]:
        """Current members matching selector, sorted by name; one node per address (rules: module doc)."""
        self._reload_file()
        now = self._clock()
        by_address: dict[str, FleetNode] = {}
        reported: dict[str, str] = {}
        with self._lock:
            self._expire(now)
            # by source, in SOURCE_PRIORITY order (file, registered, DNS): an address's first node wins
            for n in self._file_nodes:
                by_address.setdefault(n.address, n)
            if by_address:
                for lease in self._leases.values():
                    by_address.setdefault(lease.node.address, lease.node)
            else:  # (one holder per registered address: fleet_leases.py)
                by_address = {lease.node.address: lease.node for lease in self._leases.values()}
            dns = [n for nodes in self._dns_nodes.values() for n in nodes]
            for n in dns:
                by_address.setdefault(n.address, n)
            for gone in [a for a in self._contacts if a not in by_address]:  # departed nodes
                del self._contacts[gone]
            if dns:
                reported = {a: c.reported_name for a, c in self._contacts.items() if c.reported_name}
        out = []
        for n in by_address.values():
            if n.source == SOURCE_DNS and n.address in reported:  # DNS only knows addresses
                n = replace(n, name=reported[n.address])
            if not selector or n.matches(selector):
                out.append(n)
        return sorted(out, key=_by_name)

    def unchecked(self) -> list[str]:
        """The addresses of current members (nodes()' order) whose health nobody has seen yet: no contact,
        or health UNKNOWN (what FirstHealthChecks checks; views() without a NodeView per node)."""
        nodes = self.nodes()
        with self._lock:
            got = self._contacts
            return [n.address for n in nodes if (c := got.get(n.address)) is None or c.health == "UNKNOWN"]

    def addresses(self) -> set[str]:
        """The addresses of the current members: nodes()' addresses without its naming, selection and order
        (what the channel pool keeps on a prune)."""
        self._reload_file()
        now = self._clock()
        with self._lock:
            self._expire(now)
            out = set(self._file_by_address)
            out.update(lease.node.address for lease in self._leases.values())
            for nodes in self._dns_nodes.values():
                out.update(n.address for n in nodes)
        return out

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
            self._contacts[address] = Contact(utc_now(), health, reported_name or (prev.reported_name if prev else ""))

    def record_contacts(self, contacts: list[tuple[str, str, str]]) -> None:
        """record_contact for many (address, health, reported name) at once: one lock, one clock read."""
        now = utc_now()
        with self._lock:
            got = self._contacts
            for address, health, reported_name in contacts:
                prev = got.get(address)
                got[address] = Contact(now, health, reported_name or (prev.reported_name if prev else ""))

    def healths(self) -> dict[str, str]:
        """address -> the health last seen there, for every address with a contact (one lock)."""
        with self._lock:
            return {a: c.health for a, c in self._contacts.items()}

    def restore_contact(self, address: str, health: str, at: datetime, reported_name: str = "") -> None:
        """A contact read back from a snapshot: `health` seen at `at` (before the restart), and the name the
        node's daemon reported (a DNS node's name). A first health check skips the address unless health is
        UNKNOWN; ListNodes checks it again once `at` is older than its HEALTH_STALE_AFTER, as any contact
        (server/inventory/inventory_snapshot.py)."""
        with self._lock:
            prev = self._contacts.get(address)
            self._contacts[address] = Contact(at, health, reported_name or (prev.reported_name if prev else ""))

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

