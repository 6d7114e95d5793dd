"""The inventory snapshot (`nodecompat aggregator --state-file PATH`): the fleet remembered across restarts.

Written: by SnapshotWriter, a thread of its own (never the event loop), at most every `interval` seconds when the
feature store or the lease table changed since the last write (FeatureStore.generation, lease_changes; a write waits
while the inventory's streams are being opened, InventorySync.resubscribing, at most MAX_DEFER), and once more
on a graceful stop. The file is an InventorySnapshot (protos/nodecompat/v1/snapshot.proto): each distinct feature set
once (fingerprint -> canonical bytes, nodecompat/fleet/fingerprint.py: what the fingerprint digests, so a reader
recomputes it), and per registered node its name, address, labels, fingerprint, identity attributes, round id, probe
time, lease principal, granted lease and the health last seen at its address; then the streamed nodes (nodes file,
DNS, no lease: server/inventory/snapshot_streams.py). Protobuf because the project already ships it, it is compact
(10,000 nodes: 2.7 MB) and fast to read and write from C (upb), and its reader never executes anything; schema
evolution is protobuf's. Atomic: a temporary file in the same directory (mode 0600), written, fsync'd, renamed over
PATH, then the directory fsync'd, so a crash leaves the previous snapshot or the new one, never half of one. One
aggregator per file: SnapshotWriter.claim() flocks `.NAME.lock` (a second one refuses to start) and removes the
temporary files a crash left. Bounded: a snapshot larger than `max_bytes` (--state-max-mib) is not written: logged,
and the health name STATE_HEALTH ("nodecompat.v1.FleetService/StateFile") is NOT_SERVING until a write succeeds again
(a failed write says so the same way).

Read (load_snapshot, at start, before serving) as untrusted input (server/inventory/snapshot_read.py: the size checked
(fstat) before reading, at most twice --max-registrations sets and nodes plus the nodes the nodes file and DNS list
parsed, none oversized); any error reading or parsing (truncated, random bytes, another version) logs a warning and
the aggregator starts empty: it never crashes or refuses to start because of this file. Every feature set's
fingerprint is recomputed from its canonical bytes after parsing them as NFD's wire form (Features.from_nfd, strict);
a set whose digest differs, or that does not parse, is dropped with its nodes. Every node is checked as a RegisterNode
is (name, address, labels: fleet_leases.restore; fingerprint format, identity bounds, probe time:
inventory_push.push_problem), against the leases held, the nodes file and DNS (a node of the same name or address
there wins: the restored entry is dropped), and at most --max-registrations are held. A probe time later than now is
stored as now (FeatureStore). A streamed entry is held only at an address the nodes file or DNS still lists, under its
current name (server/inventory/snapshot_streams.py). Dropped entries are counted and logged, one line per reason with
an example.

Restored nodes are held at once (ListNodes, ValidateFleet, WatchFleet, WhatIf see them with their as_of) and
their lease timers restart at load, as Nomad does on leader election (nomad/leader.go
initializeHeartbeatTimers; Consul resets session TTLs on a leader change): a node not confirmed by a
RegisterNode within its lease TTL of the start leaves as on expiry, and STALE counts heartbeat silence
from the load (the record's heard_at is the load). The lease keeps its principal: only the same principal
renews it (docs/security.md). A restored node's next beat announcing the same fingerprint is a plain
renewal (PushedNodes.restore: no fetch, no stream). Its health is the one last seen at its address before
the restart (SERVING only; anything else is not kept and the node gets its first health check), dated at
the snapshot's time, so the first health checks skip it and ListNodes re-checks it once that is older than
HEALTH_STALE_AFTER, as any contact.

Not with `--store etcd://` (cmd_aggregator refuses the combination): replicas sharing etcd hold their
registrations there already and the inventory is shared out among them (docs/inventory.md "Restarts").
Hand-written: the glue between the lease table, the feature store and a protobuf file; no library fits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from nodecompat.features import Features
from nodecompat.fleet.fingerprint import canonical_bytes
from nodecompat.fleet.store import FeatureStore
from nodecompat.server.inventory.inventory_push import push_problem
from nodecompat.server.inventory.snapshot_read import VERSION, read_snapshot
from nodecompat.server.inventory.snapshot_streams import (
    collect_streamed,
    hold,
    listed,
    probed_at,
    restore_streamed,
)
from nodecompat.server.inventory.snapshot_write import write_atomic
from nodecompat.v1 import fleet_pb2, snapshot_pb2

if TYPE_CHECKING:
    from nodecompat.server.inventory.fleet_nodes import NodeInventory
    from nodecompat.server.inventory.inventory_push import PushedNodes
    from nodecompat.server.runtime.grpc_server import Health

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 << 20  # --state-max-mib 64: 10,000 nodes in 20 profiles take 2.7 MB
WRITE_INTERVAL = 5.0  # s: at most one write this often (when something changed)
# s a periodic write waits at most while `busy` (streams being opened: InventorySync.resubscribing). A write of 10,000
# nodes takes ~0.3-0.45 s of CPU holding the GIL (the streams' event loop waits meanwhile), and during an aggregator's
# resubscribe it would only move the restored nodes' probe times by a round.
MAX_DEFER = 30.0
STATE_HEALTH = "nodecompat.v1.FleetService/StateFile"
MAX_PRINCIPAL = 256


class SnapshotTooBig(Exception):
    """The snapshot's serialized size passes --state-max-mib; nothing was written."""


@dataclass
class LoadReport:
    """What load_snapshot did: nodes and sets held, entries dropped by reason, and the first problem met."""

    nodes: int = 0  # registered
    streamed: int = 0  # nodes file / DNS (server/inventory/snapshot_streams.py)
    sets: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    error: str = ""  # the whole file was refused (the aggregator started empty)


def _ts(seconds: float) -> tuple[int, int]:
    whole = math.floor(seconds)
    return whole, int((seconds - whole) * 1e9)


def collect(inventory: NodeInventory, store: FeatureStore | None,
            cache: dict[str, bytes] | None = None) -> snapshot_pb2.InventorySnapshot:
    """The snapshot of what `inventory` and `store` hold now: registered nodes, then the streamed ones (nodes file,
    DNS: server/inventory/snapshot_streams.py). `cache`: fingerprint -> canonical bytes kept between writes (a set's
    bytes never change under its fingerprint)."""
    cache = {} if cache is None else cache
    snap = snapshot_pb2.InventorySnapshot(version=VERSION)
    snap.written_at.FromNanoseconds(time.time_ns())
    leases = inventory.lease_states()
    healths = inventory.healths()
    records = store.records_by_key([n.address for n, _, _ in leases]) if store is not None else {}
    used: set[str] = set()
    for node, principal, ttl in leases:
        entry = snap.nodes.add(name=node.name, address=node.address, principal=principal, lease_ttl_seconds=ttl,
                               health="SERVING" if healths.get(node.address) == "SERVING" else "")
        entry.labels.update(node.labels)
        rec = records.get(node.address)
        if rec is None or not rec.has_features:
            continue
        entry.fingerprint, entry.round_id = rec.fingerprint, rec.round_id
        entry.probed_at.seconds, entry.probed_at.nanos = _ts(rec.probed_at)
        entry.probed_at_seconds = rec.probed_at
        for feature, element, value in rec.identity:
            entry.identity[feature].elements[element] = value
        used.add(rec.fingerprint)
    if store is not None:
        used |= collect_streamed(inventory, store, snap, {n.address for n, _, _ in leases}, healths)
    for fp in sorted(used):
        raw = cache.get(fp)
        if raw is None and store is not None and (fs := store.feature_set(fp)) is not None:
            raw = cache[fp] = canonical_bytes(fs.features, fs.unknown)
        if raw is not None:
            snap.sets.add(fingerprint=fp, canonical=raw)
    for fp in [f for f in cache if f not in used]:
        del cache[fp]
    return snap


class SnapshotWriter:
    """Writes the snapshot to `path` from a thread of its own: start(), stop() (a last write), write_now()."""

    def __init__(self, path: str | Path, inventory: NodeInventory, store: FeatureStore | None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, interval: float = WRITE_INTERVAL,
                 health: Health | None = None, busy: Callable[[], bool] | None = None,
                 max_defer: float = MAX_DEFER) -> None:
        """busy: while it answers True, periodic writes wait (at most `max_defer` s); stop() and write_now() do not."""
        self.path = Path(path)
        self.busy, self.max_defer = busy, max_defer
        self.inventory = inventory
        self.store = store
        self.max_bytes = max_bytes
        self.interval = interval
        self.health = health
        self._cache: dict[str, bytes] = {}
        self._seen: tuple[int, int] | None = None  # (store generation, lease changes) at the last write
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.last_bytes = 0
        self.last_cpu = 0.0  # s of this thread's CPU for the last write (collect + serialize + write)
        self.problem = ""  # why the last write did not happen ("" after a good one)
        self._lock_fd = -1  # claim(): the flock held on .NAME.lock (until stop() or the process ends)
        self._given_up = False  # stop() released the claim: no write after it (another aggregator may own the file)
        if health is not None:
            health.names.append(STATE_HEALTH)

    def _signature(self) -> tuple[int, int]:
        return (self.store.generation if self.store is not None else 0, self.inventory.lease_changes)

    def write_now(self, force: bool = False) -> bool:
        """Write the snapshot if anything changed since the last write (or `force`); True when written. False
        after stop() (the file was given up: a late write would overwrite the next aggregator's). Never raises:
        a failure or an oversized snapshot is logged, kept in `problem` and in the health."""
        with self._write_lock:
            if self._given_up:
                self.problem = "stopped: the state file was given up (another aggregator may use it); not written"
                return False
            sig = self._signature()
            if not force and sig == self._seen:
                return False
            cpu0 = time.thread_time()
            try:
                data = collect(self.inventory, self.store, self._cache).SerializeToString()
                if len(data) > self.max_bytes:
                    raise SnapshotTooBig(f"the snapshot would take {len(data):,} bytes, over --state-max-mib "
                                         f"({self.max_bytes:,} bytes): not written, the previous one stays")
                write_atomic(self.path, data)
            except (OSError, SnapshotTooBig) as exc:
                if str(exc) != self.problem:
                    log.error("state file %s: %s", self.path, exc)
                self.problem = str(exc)
                self._set_health(False)
                return False
            except Exception as exc:  # a bug: logged, the aggregator goes on
                log.exception("state file %s: write failed", self.path)
                self.problem = f"{type(exc).__name__}: {exc}"
                self._set_health(False)
                return False
            self.last_cpu = time.thread_time() - cpu0
            self._seen, self.last_bytes, self.problem = sig, len(data), ""
            self.writes += 1
            self._set_health(True)
            return True

    def _set_health(self, ok: bool) -> None:
        if self.health is None:
            return
        from grpc_health.v1 import health_pb2

        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if self.health.runtime.loop.is_running():
            self.health.runtime.call(self.health.servicer.set(STATE_HEALTH, status))

    def claim(self) -> None:
        """Take the state file for this aggregator (before load_snapshot): an exclusive flock on
        `.NAME.lock` beside it, held until stop() or the process ends, then remove the temporary files a crashed
        writer left (`.NAME.*.tmp`; nobody else writes them while the lock is held). ValueError, naming
        the path, when another aggregator holds it (two writing one file would each overwrite the other's
        inventory) or the directory is not writable."""
        import fcntl

        lock = self.path.parent / f".{self.path.name}.lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ValueError(f"--state-file {self.path}: cannot create {lock} ({exc.strerror}): the directory "
                             "must be writable by the aggregator") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise ValueError(f"--state-file {self.path}: another aggregator uses it (it holds {lock}); give "
                             "each aggregator its own state file") from exc
        self._lock_fd = fd
        stale = [e for e in os.scandir(self.path.parent) if e.name.startswith(f".{self.path.name}.")
                 and e.name.endswith(".tmp") and e.is_file(follow_symlinks=False)]
        for entry in stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        if stale:
            log.warning("state file %s: removed %d temporary file(s) left by an interrupted write (e.g. %s)",
                        self.path, len(stale), stale[0].name)

    def start(self) -> None:
        if self._thread is None:
            self._seen = self._signature()  # what was just loaded is on disk already
            self._thread = threading.Thread(target=self._loop, name="fleet-state-file", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        waited = 0.0
        while not self._stop.wait(self.interval):
            if self.busy is not None and waited < self.max_defer and self.busy():
                waited += self.interval
                continue
            waited = 0.0
            self.write_now()

    def stop(self) -> None:
        """End the thread, write what is held now (a graceful stop), then give the file up: the claim's flock
        is released, so an aggregator started next (a restart in the same process or another) may claim it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.write_now()
        with self._write_lock:  # no write may run past the release
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing the descriptor releases its flock
                self._lock_fd = -1
            self._given_up = True


def _feature_set(entry: snapshot_pb2.SnapshotFeatureSet) -> tuple[Features, dict[str, str]] | str:
    """A set's features and unknown map, or why it is dropped (its digest, its form)."""
    fp = entry.fingerprint
    if "sha256:" + hashlib.sha256(entry.canonical).hexdigest() != fp:
        return "feature set whose fingerprint does not match its contents"
    try:
        doc = json.loads(entry.canonical)
        if not isinstance(doc, dict) or set(doc) - {"features", "unknown"}:
            raise ValueError("expected {features, unknown}")
        features = Features.from_nfd(doc.get("features") or {})
        unknown = doc.get("unknown") or {}
        if not isinstance(unknown, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in unknown.items()):
            raise ValueError("unknown: expected an object of strings")
    except (ValueError, TypeError, RecursionError) as exc:
        return f"feature set that does not parse ({str(exc)[:120]})"
    if canonical_bytes(features, unknown) != entry.canonical:  # what is held is what was digested
        return "feature set not in canonical form"
    return features, unknown


def load_snapshot(path: str | Path, inventory: NodeInventory, store: FeatureStore | None,
                  push: PushedNodes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> LoadReport:
    """Hold what the snapshot at `path` remembers (module doc: the checks); never raises on the file's
    contents. Call after inventory.load() (the nodes file and DNS win over restored entries) and before
    serving. Returns what was held and dropped (also logged)."""
    path = Path(path)
    report = LoadReport()
    members = listed(inventory)  # the nodes file's and DNS's nodes: streamed entries are held only at these
    got = read_snapshot(path, max_bytes, 2 * inventory.max_registrations + len(members))
    if isinstance(got, str):
        if got:
            report.error = got
            log.warning("state file %s ignored, starting with an empty inventory: %s", path, got)
        return report
    snap, report.dropped = got
    written = snap.written_at.seconds + snap.written_at.nanos / 1e9
    at = datetime.fromtimestamp(min(max(written, 0.0), time.time()), UTC)
    sets: dict[str, tuple[Features, dict[str, str]]] = {}
    examples: dict[str, str] = dict.fromkeys(report.dropped, "(not parsed)")

    def drop(reason: str, what: str) -> None:
        report.dropped[reason] += 1
        examples.setdefault(reason, what[:120])

    if store is not None:
        for entry in snap.sets:
            if entry.fingerprint in sets:
                continue
            parsed = _feature_set(entry)
            if isinstance(parsed, str):
                drop(parsed, entry.fingerprint)
            else:
                sets[entry.fingerprint] = parsed
    # the file's fingerprint -> the one the store holds it under: they differ for a file written before
    # volatile values (nodecompat/fleet/volatile.py), whose sets hold usage values the store leaves out
    placed: dict[str, str] = {}
    for node in snap.nodes:
        req = fleet_pb2.RegisterNodeRequest(name=node.name, address=node.address, fingerprint=node.fingerprint,
                                            round_id=node.round_id)
        if node.HasField("probed_at"):
            req.probed_at.CopyFrom(node.probed_at)
        for feature, attr in node.identity.items():
            req.identity[feature].CopyFrom(attr)
        if problem := push_problem(req):
            drop(problem, node.name)
            continue
        fp = node.fingerprint
        if fp and store is not None and fp not in sets:
            drop("node whose feature set is missing or was dropped", node.name)
            continue
        if node.streamed:
            report.streamed += restore_streamed(node, req, members, inventory, store, sets, placed, at, drop)
            continue
        if len(node.principal) > MAX_PRINCIPAL:
            drop(f"principal longer than {MAX_PRINCIPAL} characters", node.name)
            continue
        problem, ttl = inventory.restore(node.name, node.address, dict(node.labels), node.lease_ttl_seconds,
                                         node.principal)
        if problem:
            drop(problem, node.name)
            continue
        report.nodes += 1
        if node.health == "SERVING":
            inventory.restore_contact(node.address, "SERVING", at)
        if not fp or store is None:
            continue  # a lease only: its features come from the node (a stream or its next announcement)
        got_rec = hold(store, node, req, sets, placed, node.name, dict(node.labels), fp)
        if isinstance(got_rec, tuple):
            drop(*got_rec)
            continue
        if push is not None:
            push.restore(node.address, node.name, fp, node.round_id, probed_at(node, req), ttl)
    report.sets = len(set(placed.values()))
    for reason, n in report.dropped.items():
        log.warning("state file %s: %d entr%s dropped: %s (e.g. %r)", path, n, "y" if n == 1 else "ies", reason,
                    examples[reason])
    log.info("state file %s: %d registered node(s) and %d feature set(s) held again, with %d streamed node(s) "
             "(nodes file, DNS); %d entr%s dropped; each registered one must renew within its lease", path,
             report.nodes, report.sets, report.streamed, sum(report.dropped.values()),
             "y" if sum(report.dropped.values()) == 1 else "ies")
    return report


__all__ = ["STATE_HEALTH", "LoadReport", "SnapshotWriter", "collect", "load_snapshot", "write_atomic"]
