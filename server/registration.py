"""LeaseKeeper: a node daemon's membership in a fleet whose aggregator it registers with.

For hybrid fleets where nodes come and go: the daemon calls RegisterNode, then renews every ttl/3 (the
ttl the aggregator granted), so one or two lost heartbeats do not drop it. Failures are logged and
retried on the same beat; RegisterNode is an idempotent upsert, so when the aggregator restarts and
forgets everything, the next heartbeat puts the node back. stop() deregisters (best effort) so a node
that shuts down cleanly leaves at once; a node that dies leaves when its lease lapses.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping

import grpc

from nodecompat.server import tls
from nodecompat.server.registration_auth import LEASE_KEY_METADATA, TOKEN_METADATA
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
MIN_BEAT = 0.2


class LeaseKeeper:
    def __init__(
        self,
        aggregator: str,
        *,
        name: str,
        address: str,
        labels: Mapping[str, str] | None = None,
        ttl: float = 0.0,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        token: bytes | None = None,
    ) -> None:
        """ttl 0 takes the aggregator's default lease; TLS is used when tls_ca (or a cert) is given.

        Every call carries a random lease key (only this keeper can renew or deregister its lease,
        server/registration_auth.py) and, when given, the fleet's shared registration token."""
        self.aggregator = aggregator
        self.request = fleet_pb2.RegisterNodeRequest(
            name=name, address=address, labels=dict(labels or {}), ttl_seconds=ttl
        )
        creds = tls.ClientTls(tls_ca, tls_cert, tls_key).credentials()
        self._channel = tls.open_channel(aggregator, creds, [("grpc.max_reconnect_backoff_ms", 2000)])
        self._stub = fleet_pb2_grpc.FleetServiceStub(self._channel)
        self._metadata: list[tuple[str, str]] = [(LEASE_KEY_METADATA, secrets.token_hex(32))]
        if token is not None:
            self._metadata.append((TOKEN_METADATA, token.decode("ascii")))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.granted_ttl: float = 0.0
        self.registered = threading.Event()
        self.last_error: str = ""

    def heartbeat(self) -> bool:
        """One RegisterNode call; True when the aggregator accepted it."""
        try:
            resp = self._stub.RegisterNode(self.request, timeout=CALL_TIMEOUT, metadata=self._metadata)
        except grpc.RpcError as exc:
            msg = f"{exc.code().name}: {exc.details()}"
            if msg != self.last_error:  # refusals (bad address, address taken) need the operator: error level
                level = logging.ERROR if exc.code() in REFUSALS else logging.WARNING
                log.log(level, "registration with %s failed (will retry): %s", self.aggregator, msg)
            self.last_error = msg
            self.registered.clear()
            return False
        if not self.registered.is_set():
            log.info(
                "registered with %s as %s (%s), lease %.1fs",
                self.aggregator,
                self.request.name,
                self.request.address,
                resp.ttl_seconds,
            )
        self.granted_ttl = resp.ttl_seconds
        self.last_error = ""
        self.registered.set()
        return True

    def interval(self) -> float:
        ttl = self.granted_ttl or self.request.ttl_seconds or 3.0
        return max(MIN_BEAT, ttl / 3)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.heartbeat()
            self._stop.wait(self.interval())

    def stop(self) -> None:
        """Stop heartbeats and deregister (best effort, short timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CALL_TIMEOUT)
        try:
            self._stub.DeregisterNode(
                fleet_pb2.DeregisterNodeRequest(name=self.request.name), timeout=2.0, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            log.info("deregistration from %s failed: %s", self.aggregator, exc.code().name)
        self._channel.close()
