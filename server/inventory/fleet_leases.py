"""Registered fleet nodes: leases (RegisterNode/DeregisterNode) and the address-collision rules.

Registered nodes hold a lease that lapses unless renewed. One address is one node (it is one daemon),
and no node may vanish silently because another claims its address, so address collisions are settled
by these rules:
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

Registrations are capped (`max_registrations`, RESOURCE_EXHAUSTED past it); a registered address must be
one others can dial (a wildcard host such as 0.0.0.0 or :: is refused). The granted lease grows with the
number of leases held and the rate of new registrations so that all RegisterNode calls together stay under
`max_heartbeats_per_second` (grant_ttl, as Nomad scales its heartbeat TTL), during a registration burst too.
LeaseRegistry is a mixin of NodeInventory (server/inventory/fleet_nodes.py), which owns the state it declares and
the nodes file it re-reads.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from nodecompat.hostport import is_wildcard_host, split_address
from nodecompat.server.inventory.fleet_members import (
    MAX_ADDRESS,
    MAX_LEASE_TTL,
    MIN_LEASE_TTL,
    SOURCE_REGISTERED,
    AddressInUse,
    Contact,
    FleetNode,
    NameInUse,
    NotRegistrant,
    RegistrationsFull,
    check_labels,
    name_problem,
    utc_now,
)
from nodecompat.server.inventory.registration_rate import RegistrationRate
from nodecompat.server.inventory.registration_store import RegistrationStore, StoredLease

log = logging.getLogger("nodecompat.server.inventory.fleet_nodes")  # the inventory's log, as before the split

BEATS_PER_LEASE = 3  # a LeaseKeeper renews every granted ttl/3 (server/node/registration.py)
# RegisterNode/s all leases together send at most (grant_ttl): ~1.3-1.5 ms of aggregator CPU each (a connection per
# beat, bench/bench_lease_conn.py), so 200/s is ~30% of one core (mTLS, ~2.5 ms: ~50%); 10,000 nodes get 150 s.
DEFAULT_MAX_HEARTBEATS_PER_SECOND = 200.0
MAX_SCALED_TTL = 600.0  # s: the rate-scaled lease at most (a dead node leaves within 10 minutes at any size)
TTL_STAGGER = 0.1  # a rate-scaled lease is lengthened by up to this fraction at random (Nomad's stagger)
BURST_TTL_SPREAD = 0.5  # during a burst over the budget, leases of this fraction of MAX_SCALED_TTL to all of it


@dataclass(slots=True)
class _Lease:
    node: FleetNode
    expires: float
    principal: str = "anonymous"  # who registered it (server/inventory/registration_auth.py); only they renew
    ttl: float = 0.0  # s: the lease granted last (what a snapshot keeps: server/inventory/inventory_snapshot.py)


def registration_problem(name: str, address: str) -> str:
    """Why a registration of `name` at `address` is refused before any lookup ("" when it is not): the name's
    rules, the address's length and form, no wildcard host (RegisterNode's INVALID_ARGUMENT)."""
    if problem := name_problem(name):
        return f"name {problem}"
    if len(address) > MAX_ADDRESS:
        return f"address must be at most {MAX_ADDRESS} characters"
    try:
        host, _port = split_address(address)
    except ValueError as exc:
        return f"address {exc}"
    if is_wildcard_host(host):
        return (f"address {address!r} has a wildcard host ({host or 'empty'}): it means 'every interface' to a "
                "listener and cannot be dialled; register the node's reachable address (serve --advertise)")
    return ""


class LeaseRegistry:
    """Registrations and their collision rules; mixed into NodeInventory, which sets these attributes."""

    store: RegistrationStore | None
    max_registrations: int
    nodes_file: Path | None
    lease_ttl: float
    max_heartbeats_per_second: float  # 0: leases are not scaled with their number (grant_ttl)
    ttl_stagger: float
    _clock: Callable[[], float]
    _lock: threading.Lock
    _file_nodes: list[FleetNode]
    _file_by_address: dict[str, FleetNode]
    _dns_nodes: dict[tuple[str, int], list[FleetNode]]
    _leases: dict[str, _Lease]
    _new_rate: RegistrationRate  # new registrations (RegisterNode of a name with no live lease) a second
    lease_changes: int  # leases put (not renewals) or dropped since the start
    lease_puts: int  # leases put or renewed since the start (a registration burst's measure: first_check.py)
    _lease_by_address: dict[str, str]  # address -> registered name (one holder per address)
    _contacts: dict[str, Contact]

    def _reload_file(self, strict: bool = False) -> None:
        raise NotImplementedError  # NodeInventory's

    def _file_changed(self) -> bool:
        raise NotImplementedError  # NodeInventory's

    def grant_ttl(self, requested: float, renewal: bool = False) -> float:
        """The lease (s) granted to a RegisterNode asking for `requested` s (0, NaN or negative: none asked).

        Unscaled: lease_ttl when none is asked, else the request within [MIN_LEASE_TTL, max(lease_ttl,
        MAX_LEASE_TTL)]. Rate-scaled (max_heartbeats_per_second = R > 0): the RegisterNode calls of all leases
        together stay within R a second, new registrations included, as Nomad scales its heartbeat TTL
        (nomad/heartbeat.go, resetHeartbeatTimer: ttl = RateScaledInterval(max_heartbeats_per_second,
        min_heartbeat_ttl, nodes) + RandomStagger(ttl)). With `leases` held now (a renewal counts its own; a new
        node's first grant counts the others; lapsed ones until a lookup drops them) and `new` registrations a
        second over the last second (registration_rate.py), the renewals get what the registrations leave,
        R - new: the lease is at least BEATS_PER_LEASE * leases / (R - new), each lease being renewed every
        ttl/3 (LeaseKeeper), lengthened by up to ttl_stagger at random, at most MAX_SCALED_TTL. So a lease granted
        during a registration burst already fits the fleet the burst is building, instead of the few leases
        held when it began (a 10,000-node burst gave its first registrants 30 s leases renewed every 10 s while
        it lasted: 18,832-29,488 calls for 10,000 nodes). When the registrations alone take the budget (new >= R:
        an aggregator restart without a snapshot, every daemon coming back), the lease is BURST_TTL_SPREAD x
        MAX_SCALED_TTL to MAX_SCALED_TTL at random: no renewal while the burst lasts, and the burst's first
        renewals spread over 100 s, at most R a second for a burst of up to 100 R nodes; their renewals then get
        the fleet's lease. As Nomad after a leader change (nomad/heartbeat.go, initializeHeartbeatTimers: every
        node gets the failover TTL, 300 s by default, "longer than the usual TTL since clients are switching").
        A node gone during a burst thus leaves within 10 minutes, as any node of a fleet big enough; with no
        burst, the rule is Nomad's (new = 0). An unscaled grant longer than the scaled one stays.
        A `renewal` (a live lease of the name renewed) gets at least R / 2 whatever `new`, and never the burst
        lease: new registrations are counted whether or not the fleet grows (one name registered and deregistered
        again and again), so they may at most double every other node's lease, not hold it at 300-600 s.
        """
        if not requested or math.isnan(requested) or requested <= 0:
            granted = self.lease_ttl
        else:
            granted = min(max(requested, MIN_LEASE_TTL), max(self.lease_ttl, MAX_LEASE_TTL))
        rate = self.max_heartbeats_per_second
        if rate <= 0:
            return granted
        spare = rate - self._new_rate.per_second(self._clock())  # what renewals may send a second
        if renewal:
            spare = max(spare, rate / 2)
        if spare <= 0:  # the registrations alone take the budget: a burst
            return max(granted, MAX_SCALED_TTL * (BURST_TTL_SPREAD + (1.0 - BURST_TTL_SPREAD) * random.random()))
        scaled = BEATS_PER_LEASE * len(self._leases) / spare
        if scaled <= granted:
            return granted
        stagger = 1.0 + self.ttl_stagger * random.random() if self.ttl_stagger > 0 else 1.0
        return max(granted, min(scaled * stagger, MAX_SCALED_TTL))

    def register(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str = "anonymous"
    ) -> float:
        """Create or renew a lease; returns the granted ttl.

        ValueError on a bad name/address/labels, AddressInUse when another node holds the address (or
        the nodes file or DNS gives it), NameInUse when the nodes file or DNS has the name,
        NotRegistrant when a live lease of the name belongs to another principal, RegistrationsFull
        when a new name would exceed `max_registrations` live leases.
        """
        granted = self._register(name, address, labels, ttl, principal, True)
        assert granted is not None
        return granted

    def register_now(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str = "anonymous"
    ) -> float | None:
        """register() without waiting (for an event loop): None, with nothing changed, when it would wait —
        for the shared store (a network round trip), for the lock (another thread holds it), or for a
        re-read of the nodes file (it changed since it was last read). Raises as register()."""
        return self._register(name, address, labels, ttl, principal, False)

    def _register(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str, wait: bool
    ) -> float | None:
        if not wait and self.store is not None:
            return None
        if problem := registration_problem(name, address):
            raise ValueError(problem)
        clean = check_labels(labels, "labels")
        current = self._leases.get(name)  # read again under the lock below; here: a renewal's grant
        granted = self.grant_ttl(ttl, current is not None and current.expires > self._clock())
        if wait:
            self._reload_file()
        elif self._file_changed():
            return None
        now = self._clock()
        if not self._lock.acquire(blocking=wait):
            return None
        try:
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
            # A new registration (no live lease of the name) counts against the heartbeat budget (grant_ttl) once
            # it is accepted: here with no store, after the store's claim with one (a claim refused or not
            # answered costs the budget nothing, so refused registrations cannot lengthen every lease).
            new = current is None or current.expires <= now
            if self.store is None:
                if new:
                    self._new_rate.add(now)
                self._put_lease(name, address, clean, granted, principal, now)
        finally:
            self._lock.release()
        if self.store is not None:  # outside the lock: the store's transaction settles races across replicas
            # A move frees the old address in the store when the old etcd lease is revoked or lapses.
            self.store.claim(StoredLease(name, address, clean, principal, granted))
            with self._lock:
                now = self._clock()
                if new:
                    self._new_rate.add(now)
                self._put_lease(name, address, clean, granted, principal, now)
        return granted

    def _put_lease(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str, now: float
    ) -> None:
        """Caller holds the lock."""
        self.lease_puts += 1
        previous = self._leases.get(name)
        contact = self._contacts.get(address)
        if (previous is not None and previous.node.address == address and previous.principal == principal
                and previous.node.labels == labels and self._lease_by_address.get(address) == name):
            previous.expires, previous.ttl = now + ttl, ttl  # a renewal (a heartbeat): the node stays as it is
            if contact is not None:
                contact.at = utc_now()
                return
            self._contacts[address] = Contact(utc_now(), "UNKNOWN")
            return
        self.lease_changes += 1  # a new lease, a move, new labels or a new principal
        if previous is not None and previous.node.address != address:
            self._lease_by_address.pop(previous.node.address, None)  # the node moved
        holder = self._lease_by_address.get(address)
        if holder is not None and holder != name and holder in self._leases:
            self._drop_lease(holder, "its address was taken in the shared store")
        self._leases[name] = _Lease(FleetNode(name, address, dict(labels), SOURCE_REGISTERED), now + ttl, principal,
                                    ttl)
        self._lease_by_address[address] = name
        self._contacts[address] = replace(contact or Contact(utc_now(), "UNKNOWN"), at=utc_now())

    def restore(
        self, name: str, address: str, labels: Mapping[str, str], ttl: float, principal: str
    ) -> tuple[str, float]:
        """Hold a lease read back from a snapshot (server/inventory/inventory_snapshot.py): checked as a new
        RegisterNode is (name, address, labels, collisions with leases held, the nodes file and DNS,
        max_registrations), its timer started now for `ttl` s (bounded as grant_ttl bounds a lease; NaN or
        <= 0: lease_ttl), bound to `principal`. ("", the lease's ttl) when held, else (why not, 0.0): nothing
        changed."""
        if problem := registration_problem(name, address):
            return problem, 0.0
        try:
            clean = check_labels(labels, "labels")
        except ValueError as exc:
            return str(exc), 0.0
        if not principal or len(principal) > 256 or not principal.isprintable():
            return "principal must be 1-256 printable characters", 0.0
        top = max(self.lease_ttl, MAX_LEASE_TTL, MAX_SCALED_TTL)
        ttl = min(max(ttl, MIN_LEASE_TTL), top) if ttl > 0 and math.isfinite(ttl) else self.lease_ttl
        with self._lock:
            if name in self._leases:
                return f"node {name!r} is registered already", 0.0
            holder = self._lease_by_address.get(address)
            if holder is not None:
                return f"address {address} is held by registered node {holder!r}", 0.0
            try:
                self._check_shadowing(name, address)
            except (AddressInUse, NameInUse) as exc:
                return str(exc), 0.0
            if len(self._leases) >= self.max_registrations:
                return f"the aggregator holds {len(self._leases)} registrations (--max-registrations)", 0.0
            self._put_lease(name, address, clean, ttl, principal, self._clock())
        return "", ttl

    def lease_states(self) -> list[tuple[FleetNode, str, float]]:
        """(node, principal, granted ttl s) of every live lease, under one lock (what a snapshot writes)."""
        now = self._clock()
        with self._lock:
            return [(lease.node, lease.principal, lease.ttl) for lease in self._leases.values() if lease.expires > now]

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

    def _drop_lease(self, name: str, why: str) -> None:
        """Caller holds the lock."""
        lease = self._leases.pop(name)
        self.lease_changes += 1
        if self._lease_by_address.get(lease.node.address) == name:
            del self._lease_by_address[lease.node.address]
        if why:
            log.info("node %s (%s) left the fleet: %s", name, lease.node.address, why)

    def _expire(self, now: float) -> None:
        """Drop lapsed leases and leases whose address the nodes file now gives another name. Caller locks.
        Every lookup calls it (10,000 leases: the lease table's lock is held for the loop), so the
        shadowing rules are looked at only when there is a nodes file or DNS node that could shadow."""
        lapsed = [name for name, lease in self._leases.items() if lease.expires <= now]
        for name in lapsed:
            self._drop_lease(name, "lease lapsed")
        if not self._file_nodes and not any(self._dns_nodes.values()):
            return
        for name, lease in list(self._leases.items()):
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
