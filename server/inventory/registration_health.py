"""What the aggregator's health says about registrations: the service name REGISTRATION_HEALTH
("nodecompat.v1.FleetService/RegisterNode") is NOT_SERVING while the shared registration store does not
answer (an etcd outage: new registrations are refused UNAVAILABLE), SERVING otherwise; the FleetService
name itself stays SERVING through an outage, since ValidateFleet, ListNodes and renewals of known
registrations go on from what the replica holds (server/inventory/store_etcd.py). Without a shared store the name
follows the FleetService. grpc.health.v1 service names are free-form; this one names the RPC it covers.
"""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from nodecompat.server.inventory.registration_store import RegistrationStore
from nodecompat.server.runtime.grpc_server import Health

REGISTRATION_HEALTH = "nodecompat.v1.FleetService/RegisterNode"


def watch_registration_health(health: Health, store: RegistrationStore | None) -> None:
    """Add REGISTRATION_HEALTH to `health` (set with the others by Health.set) and follow the store's
    availability (its `on_availability` callbacks, when it has them)."""
    health.names.append(REGISTRATION_HEALTH)
    callbacks = getattr(store, "on_availability", None)
    if callbacks is not None:
        callbacks.append(lambda up: _set(health, up))


def set_registration_health(health: Health, store: RegistrationStore | None) -> None:
    """Apply the store's current availability (after Health.set(True) at start)."""
    _set(health, bool(getattr(store, "available", True)))


def _set(health: Health, up: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
    if health.runtime.loop.is_running():
        health.runtime.call(health.servicer.set(REGISTRATION_HEALTH, status))
