"""LeaseKeeper: a node daemon's membership in a fleet whose aggregator it registers with.

For hybrid fleets where nodes come and go: the daemon calls RegisterNode, then renews every ttl/3 (the
ttl the aggregator granted), so one or two lost heartbeats do not drop it. Failures are logged and
retried on the same beat; RegisterNode is an idempotent upsert, so when the aggregator restarts and
forgets everything, the next heartbeat puts the node back. stop() deregisters (best effort) so a node
that shuts down cleanly leaves at once; a node that dies leaves when its lease lapses.

Push model (docs/inventory.md): given `feature_state` (the WatchFeatures hub's push_state), every heartbeat
carries the latest probe round's id, probe time, fingerprint and identity attributes (system.name nodename),
and poke() (hooked to the hub's on_change) sends one at once when the fingerprint changes instead of at the
next beat, so the aggregator learns of a change within a probe round and fetches the features once (or, when
it already holds a set with that fingerprint, holds the node with its identity and fetches nothing), holding
no stream to this daemon.

Several aggregators (replicas sharing registrations through etcd, `serve --register A,B,C` or the flag
repeated): each beat goes to the aggregator that answered last (at first, the first listed); when it cannot
be reached (any failure but a refusal) the others are tried in the order given within the same beat, so a
dead replica costs one beat's delay, not the lease. A refusal (bad address, address taken, denied) is the
fleet's answer, the same from every replica sharing the store: no failover. The same lease key goes to
every aggregator, so a replica renews a lease another granted.

Connections (docs/inventory.md, "Registered daemons' connections"): each beat opens its own channel and closes
it when the call ends, so between beats the daemon holds no connection to the aggregator. A held HTTP/2
connection costs the aggregator ~18 KiB (plaintext) or ~52 KiB (mTLS) of RSS, past issue 12's 10 KiB a node;
the beat (every ttl/3, 10 s by default) is far apart, and the aggregator's idle limit (30 s) must stay long for
WatchFleet and ValidateFleet callers, so the daemon is the one that closes. gRPC's own client idle timeout does
not do it (measured: every connection stayed open with grpc.client_idle_timeout_ms=1000, grpcio 1.85). The
price is aggregator CPU per beat (bench/bench_lease_conn.py, 1,000 nodes, medians of 3): a TCP + HTTP/2 setup,
1.23 ms a beat instead of 1.06, and with mTLS a full handshake, 2.18 ms instead of 1.15.
No TLS session cache: resuming (grpc's client LRU; it only works
when the aggregator is given by host name) saved no measurable CPU with EC certificates and stalled some beats.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodecompat.server import tls
from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA, TOKEN_METADATA
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
MIN_BEAT = 0.2
MAX_AGGREGATORS = 16
FIRST_STATE_WAIT = 5.0  # s the first registration waits for the first probe round's feature state


def parse_aggregators(values: str | Sequence[str]) -> list[str]:
    """`--register` values (each possibly comma-separated) -> the aggregator addresses in order, duplicates
    dropped; ValueError when none is given or more than MAX_AGGREGATORS."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    if not out:
        raise ValueError("no aggregator address")
    if len(out) > MAX_AGGREGATORS:
        raise ValueError(f"at most {MAX_AGGREGATORS} aggregator addresses, got {len(out)}")
    return out


class LeaseKeeper:
    def __init__(
        self,
        aggregator: str | Sequence[str],
        *,
        name: str,
        address: str,
        labels: Mapping[str, str] | None = None,
        ttl: float = 0.0,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        token: bytes | None = None,
        feature_state: Callable[[], tuple[int, Timestamp, str, tuple[tuple[str, str, str], ...]] | None] | None = None,
    ) -> None:
        """aggregator: one address, a comma-separated list or a list (tried in order, module doc); ttl 0 takes
        the aggregator's default lease; TLS is used when tls_ca (or a cert) is given.

        Every call carries a random lease key (only this keeper can renew or deregister its lease,
        server/inventory/registration_auth.py) and, when given, the fleet's shared registration token. feature_state:
        () -> (round id, probe time, fingerprint, identity triples) or None before the first round (module doc:
        push model; the hub's push_state)."""
        self.aggregators = parse_aggregators(aggregator)
        self.current = 0  # index of the aggregator that answered last
        self.request = fleet_pb2.RegisterNodeRequest(
            name=name, address=address, labels=dict(labels or {}), ttl_seconds=ttl
        )
        self._credentials = tls.ClientTls(tls_ca, tls_cert, tls_key).credentials()
        # a connection of the channel's own (no sharing through gRPC's global subchannel pool), so close() closes
        # it (module doc: connections)
        self._options: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
        self._metadata: list[tuple[str, str]] = [(LEASE_KEY_METADATA, secrets.token_hex(32))]
        if token is not None:
            self._metadata.append((TOKEN_METADATA, token.decode("ascii")))
        self.feature_state = feature_state
        self._stop = threading.Event()
        self._wake = threading.Event()  # poke(): beat now
        self._thread: threading.Thread | None = None
        self.granted_ttl: float = 0.0
        self.registered = threading.Event()
        self.last_error: str = ""

    @property
    def aggregator(self) -> str:
        """The aggregator heartbeats go to now."""
        return self.aggregators[self.current]

    def heartbeat(self) -> bool:
        """One RegisterNode, to the current aggregator then (when it cannot be reached) to each other in the
        order given; True when one accepted it."""
        n = len(self.aggregators)
        first = self.current
        request = self._beat_request()
        for i in range(n):
            if i and self._stop.is_set():
                break  # stop() deregisters once this call ended: a failover now would register a stopped node
            idx = (first + i) % n
            try:
                resp = self._call(idx, "RegisterNode", request, CALL_TIMEOUT)
            except grpc.RpcError as exc:
                msg = f"{exc.code().name}: {exc.details()}"
                refused = exc.code() in REFUSALS
                if msg != self.last_error:  # refusals (bad address, address taken) need the operator: error level
                    more = "" if refused or i == n - 1 else "; trying the next aggregator"
                    log.log(logging.ERROR if refused else logging.WARNING,
                            "registration with %s failed (will retry): %s%s", self.aggregators[idx], msg, more)
                self.last_error = msg
                if refused:  # the fleet's answer: every replica sharing the store gives the same
                    break
                continue
            if idx != self.current or not self.registered.is_set():
                log.info("registered with %s as %s (%s), lease %.1fs", self.aggregators[idx], self.request.name,
                         self.request.address, resp.ttl_seconds)
            self.current = idx
            self.granted_ttl = resp.ttl_seconds
            self.last_error = ""
            self.registered.set()
            return True
        self.registered.clear()
        return False

    def _call(self, idx: int, method: str, request: object, timeout: float) -> Any:
        """One FleetService call to aggregator `idx` on a channel opened for it and closed when it ends (module
        doc: connections); grpc.RpcError as the call raises it."""
        channel = tls.open_channel(self.aggregators[idx], self._credentials, self._options)
        try:
            stub = fleet_pb2_grpc.FleetServiceStub(channel)
            return getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
        finally:
            channel.close()

    def _beat_request(self) -> fleet_pb2.RegisterNodeRequest:
        """The registration with the current feature state (when there is one)."""
        state = self.feature_state() if self.feature_state is not None else None
        if state is None:
            return self.request
        request = fleet_pb2.RegisterNodeRequest()
        request.CopyFrom(self.request)
        request.round_id, probed_at, request.fingerprint, identity = state
        request.probed_at.CopyFrom(probed_at)
        for feature, element, value in identity:  # the aggregator holds a known set without a fetch
            request.identity[feature].elements[element] = value
        return request

    def poke(self) -> None:
        """Send a heartbeat now (the fingerprint changed) instead of at the next beat; any thread."""
        self._wake.set()

    def interval(self) -> float:
        ttl = self.granted_ttl or self.request.ttl_seconds or 3.0
        return max(MIN_BEAT, ttl / 3)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        if self.feature_state is not None and self.feature_state() is None:
            # the first probe round pokes (the hub's first state is a change): registering with the state
            # spares the aggregator a stream it would drop at the next beat
            self._wake.wait(FIRST_STATE_WAIT)
        while not self._stop.is_set():
            self._wake.clear()  # a change from here on is in this beat's state or wakes the next wait
            self.heartbeat()
            self._wake.wait(self.interval())

    def stop(self) -> None:
        """Stop heartbeats and deregister (best effort, short timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # a beat in flight makes one call more at most (heartbeat stops failing over), which ends by its
            # deadline: waiting for it puts the deregistration after it, not before a registration
            self._thread.join(timeout=CALL_TIMEOUT + 1.0)
        idx = self.current
        try:
            self._call(idx, "DeregisterNode", fleet_pb2.DeregisterNodeRequest(name=self.request.name), 2.0)
        except grpc.RpcError as exc:
            log.info("deregistration from %s failed: %s", self.aggregators[idx], exc.code().name)
