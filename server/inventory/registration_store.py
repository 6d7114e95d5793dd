"""Where registrations live beyond one aggregator process: the store interface NodeInventory writes through.

NodeInventory (server/inventory/fleet_nodes.py) keeps every lease in its own memory and applies the collision
rules there; that alone is the default store (`--store` unset: nothing to install for one aggregator).
A shared store (server/inventory/store_etcd.py) sits behind this interface: `claim` and `release` are called by
NodeInventory after its local checks pass and before its local write, and are authoritative (the store
refuses an address another replica's node holds, atomically); `start` feeds every registration made or
removed through any replica back to the inventory through `apply`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class StoredLease:
    """One registration as a store holds it: ttl in seconds (the granted lease), principal its registrant."""

    name: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict)
    principal: str = "anonymous"
    ttl: float = 30.0


# apply(name, lease): lease None means the registration left the store (deregistered or lapsed).
Apply = Callable[[str, "StoredLease | None"], None]


class StoreUnavailable(Exception):
    """The shared store cannot be reached: the registration was not recorded (UNAVAILABLE on the wire)."""


class RegistrationStore(Protocol):
    def claim(self, lease: StoredLease) -> None:
        """Record or renew `lease` for lease.ttl seconds; AddressInUse (server/inventory/fleet_nodes.py) when another
        name holds lease.address in the store, StoreUnavailable when the store cannot be reached."""

    def release(self, name: str, address: str) -> None:
        """Remove `name`'s registration (and its hold on `address`); StoreUnavailable as claim."""

    def start(self, apply: Apply) -> None:
        """Load what the store holds and call apply for every later change, until stop()."""

    def stop(self) -> None:
        """Stop watching; idempotent."""


def open_registration_store(url: str, prefix: str = "/nodecompat/", *, ca: str | None = None,
                            cert: str | None = None, key: str | None = None,
                            watch_read_timeout: float | None = None) -> RegistrationStore | None:
    """--store URL -> a store (None for "" or memory://: registrations stay in this process); ca/cert/key:
    --store-ca/--store-cert/--store-key PEM paths (etcd over HTTPS); watch_read_timeout: seconds an idle etcd
    watch stream is kept before it is re-opened (None: etcd_kv.WATCH_READ_TIMEOUT; tests pass a shorter one).
    ValueError on a URL or TLS flags it cannot use. etcd3gw is imported only when etcd is asked for."""
    if not url or url == "memory://":
        if ca or cert or key:
            raise ValueError("--store-ca/--store-cert/--store-key are for --store etcd://...")
        return None
    if url.startswith("etcd://"):
        from nodecompat.server.inventory.store_etcd import EtcdRegistrationStore, parse_store_url

        return EtcdRegistrationStore(parse_store_url(url), prefix, ca=ca, cert=cert, key=key,
                                     watch_read_timeout=watch_read_timeout)
    raise ValueError(f"--store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...] (or nothing: in memory)")
