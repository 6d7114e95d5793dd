"""Aggregator replicas over etcd (issue 14): registration-to-visible latency across replicas, and ValidateFleet
through each replica, for a 1,000-node registered fleet.

A three-member etcd (Debian's etcd-server, started on loopback by tests/support_etcd.py) and two in-process
aggregators A and B with `--store etcd://m0,m1,m2` (the defaults otherwise, live answers only). The nodes are
bench_fleet.py's simulator: one NodeService process answering for 127.x.y.z:PORT. 1,000 nodes register
through A (RegisterNode over gRPC, 8 at a time); then, one at a time, SAMPLE more:
- figure: RegisterNode through A until B's inventory holds the node (the claim's etcd transaction, then
  etcd's watch to B);
- limit, same run, alternately: RegisterNode through B until B holds it (the same claim, no watch hop).
ValidateFleet (every node, default deadline) through A and through B, beside the same call through an
aggregator with the same 1,000 nodes in a nodes file and no store.

Then the live inventory shared out (server/inventory/inventory_shards.py): three replicas with the inventory on, the
same 1,000 nodes from a nodes file, served WatchFeatures by bench_inventory.py's simulator (5 profiles):
- how the subscriptions are shared out (each node once; per replica) and the time until every replica holds
  every node (its own share through its streams, the rest through etcd);
- ValidateFleet through each replica, every node answered from the inventory, beside one replica with no
  store holding all 1,000 subscriptions itself (alternated);
- a replica's death (its lease left to lapse, as after SIGKILL): the time until the two others hold every
  subscription, beside the bound REPLICA_TTL + 5 s.
No asserts: it prints figures. A replica that does not hold every node when a row's wait ends prints why for up to
10 of the missing nodes (explain()). --sharded-only runs the shared-out rows alone.

    .venv/bin/python bench/bench_store_etcd.py [--nodes 1000] [--sample 50] [--sharded-only]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))

from bench_fleet import SPEC, node_address  # noqa: E402
from support_daemon import stop_process  # noqa: E402
from support_etcd import start_etcd_cluster  # noqa: E402

from nodecompat.clients.fleet_client import FleetClient  # noqa: E402
from nodecompat.fleet.store import NodeRecord  # noqa: E402
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon  # noqa: E402
from nodecompat.server.inventory.registration_auth import RegistrationPolicy  # noqa: E402
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc  # noqa: E402


def _aggregator(**kw: object) -> tuple[AggregatorDaemon, str]:
    kw.setdefault("sync", None)
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", check_new_nodes=False, node_timeout=30,
                                          **kw))  # type: ignore[arg-type]
    return d, f"127.0.0.1:{d.start()}"


def _visible_after(register: Callable[[], None], holder: AggregatorDaemon, name: str, timeout: float = 30) -> float:
    t0 = time.perf_counter()
    register()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(n.name == name for n in holder.inventory.nodes()):
            return time.perf_counter() - t0
        time.sleep(0.0005)
    raise RuntimeError(f"{name} not visible in {timeout}s")


def _validate(address: str) -> tuple[float, int, int]:
    with FleetClient(address) as client:
        t0 = time.perf_counter()
        answer = client.validate(spec_text=SPEC)
        return time.perf_counter() - t0, len(answer.nodes), answer.summary.failed


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:.1f} ms (min {min(xs) * 1e3:.1f}, max {max(xs) * 1e3:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=50, help="registrations timed one at a time (each way)")
    ap.add_argument("--sharded-only", action="store_true", help="only the inventory shared out (3 replicas)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-etcd-"))
    if args.sharded_only:
        members = start_etcd_cluster(tmp, 3)
        try:
            sharded(args.nodes, "etcd://" + ",".join(m.endpoint for m in members), tmp)
        finally:
            for m in members:
                stop_process(m.proc, 5.0)
        return
    port_file = tmp / "port"
    sim = subprocess.Popen([sys.executable, str(BENCH / "bench_fleet.py"), "--serve-simulator", str(port_file)])
    members = start_etcd_cluster(tmp, 3)
    aggs: list[AggregatorDaemon] = []
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        store = "etcd://" + ",".join(m.endpoint for m in members)
        policy = RegistrationPolicy(allow_unauthenticated=True)
        a, a_addr = _aggregator(store=store, registration=policy, lease_ttl=600.0, max_registrations=100_000)
        b, b_addr = _aggregator(store=store, registration=policy, lease_ttl=600.0, max_registrations=100_000)
        aggs += [a, b]
        total = args.nodes + 2 * args.sample
        addresses = [node_address(i, port) for i in range(total)]
        channels = {addr: grpc.insecure_channel(addr) for addr in (a_addr, b_addr)}
        stubs = {addr: fleet_pb2_grpc.FleetServiceStub(ch) for addr, ch in channels.items()}

        def register(via: str, i: int) -> None:
            stubs[via].RegisterNode(fleet_pb2.RegisterNodeRequest(name=f"sim-{i:05d}", address=addresses[i]),
                                    timeout=30)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: register(a_addr, i), range(args.nodes)))
        bulk = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while len(b.inventory.nodes()) < args.nodes and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = len(b.inventory.nodes())
        print(f"3-member etcd on loopback, replicas A and B in this process; {args.nodes} registrations through A "
              f"(8 at a time): {bulk:.1f} s ({bulk / args.nodes * 1e3:.1f} ms each), {seen} on B after")
        across, local = [], []
        for k in range(args.sample):  # figure and limit alternately
            i = args.nodes + 2 * k
            across.append(_visible_after(lambda i=i: register(a_addr, i), b, f"sim-{i:05d}"))  # type: ignore[misc]
            local.append(_visible_after(lambda i=i: register(b_addr, i + 1), b, f"sim-{i + 1:05d}"))  # type: ignore[misc]
        ratio = statistics.median(across) / statistics.median(local)
        print(f"ROW registration through A visible on B ({args.sample} one at a time, {args.nodes} registered) | "
              f"{_ms(across)} | through B visible on B {_ms(local)} | ratio {ratio:.2f} | target: within 1 s "
              f"(issue 14) | {'met' if max(across) < 1.0 else 'NOT MET'}")
        nodes_file = tmp / "nodes.json"
        nodes_file.write_text("[" + ",".join(f'{{"name": "sim-{i:05d}", "address": "{addresses[i]}"}}'
                                             for i in range(total)) + "]")
        plain, plain_addr = _aggregator(nodes_file=str(nodes_file))
        aggs.append(plain)
        for _ in range(2):  # warm the channels of all three
            for addr in (a_addr, b_addr, plain_addr):
                _validate(addr)
        rows: dict[str, list[float]] = {"A": [], "B": [], "nodes file": []}
        info: dict[str, tuple[int, int]] = {}
        for _ in range(3):
            for label, addr in (("A", a_addr), ("B", b_addr), ("nodes file", plain_addr)):
                wall, reported, failed = _validate(addr)
                rows[label].append(wall)
                info[label] = (reported, failed)
        for label in ("A", "B"):
            r = statistics.median(rows[label]) / statistics.median(rows["nodes file"])
            print(f"ROW ValidateFleet through replica {label} ({info[label][0]} registered nodes, "
                  f"{info[label][1]} failed) | {_ms(rows[label])} | same nodes from a nodes file, no store "
                  f"{_ms(rows['nodes file'])} ({info['nodes file'][0]} nodes) | ratio {r:.2f} | "
                  f"target <= 1.1 | {'met' if r <= 1.1 else 'NOT MET'}")
        for ch in channels.values():
            ch.close()
        sharded(args.nodes, store, tmp)
    finally:
        for d in aggs:
            d.stop(grace=0)
        for m in members:
            stop_process(m.proc, 5.0)
        sim.terminate()
        sim.wait()


def sharded(n: int, store: str, tmp: Path) -> None:
    """The inventory shared out among three replicas (module doc)."""
    import os
    import uuid

    from bench_inventory import node_address as sim_address

    from nodecompat.server.inventory.inventory_shards import REPLICA_TTL
    from nodecompat.server.inventory.inventory_sync import SyncConfig

    port_file = tmp / "inventory-port"
    sim = subprocess.Popen([sys.executable, str(BENCH / "bench_inventory.py"), "--serve-simulator", str(port_file),
                            "--profiles", "5"], env={**os.environ, "BENCH_SIM_NODES": str(n)})
    aggs: list[AggregatorDaemon] = []
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        nodes_file = tmp / "inventory-nodes.json"
        nodes_file.write_text("[" + ",".join(f'{{"name": "sim-{i:05d}", "address": "{sim_address(i, port)}"}}'
                                             for i in range(n)) + "]")
        prefix = f"/bench-{uuid.uuid4().hex}/"
        t0 = time.perf_counter()
        for _ in range(3):
            aggs.append(_aggregator(store=store, store_prefix=prefix, nodes_file=str(nodes_file),
                                    sync=SyncConfig(heartbeat=10.0))[0])
        addrs = [f"127.0.0.1:{d.port}" for d in aggs]

        def full(d: AggregatorDaemon) -> bool:
            assert d.store is not None
            return sum(1 for r in d.store.records() if r.has_features and r.state == "OK") == n

        deadline = time.monotonic() + 120
        while not all(full(d) for d in aggs) and time.monotonic() < deadline:
            time.sleep(0.05)
        held = time.perf_counter() - t0
        for d in aggs:
            if not full(d):
                explain(d, aggs, n)
        shares = [d.sync.subscriptions() for d in aggs if d.sync is not None]
        owned = [d.shards.owned() for d in aggs if d.shards is not None]
        once = len(set().union(*owned)) == n and sum(len(o) for o in owned) == n
        print(f"inventory shared by 3 replicas over {n} nodes: subscriptions {shares} (each node once: {once}); "
              f"every replica holds every node {held:.1f} s after the three started")
        single, single_addr = _aggregator(nodes_file=str(nodes_file), sync=SyncConfig(heartbeat=10.0))
        aggs.append(single)
        deadline = time.monotonic() + 120
        while not full(single) and time.monotonic() < deadline:
            time.sleep(0.05)
        rows: dict[str, list[float]] = {a: [] for a in [*addrs, single_addr]}
        answered: dict[str, int] = {}
        for _ in range(2):
            for addr in rows:
                _validate(addr)
        for _ in range(5):
            for addr in rows:
                with FleetClient(addr) as client:
                    t1 = time.perf_counter()
                    answer = client.validate(spec_text=SPEC)
                    rows[addr].append(time.perf_counter() - t1)
                    answered[addr] = answer.summary.from_inventory
        for k, addr in enumerate(addrs):
            r = statistics.median(rows[addr]) / statistics.median(rows[single_addr])
            print(f"ROW ValidateFleet through sharing replica {'ABC'[k]} ({answered[addr]}/{n} from the inventory) | "
                  f"{_ms(rows[addr])} | one replica holding every subscription {_ms(rows[single_addr])} "
                  f"({answered[single_addr]} from the inventory) | ratio {r:.2f} | target <= 1.1 | "
                  f"{'met' if r <= 1.1 and answered[addr] == n else 'NOT MET'}")
        dead = aggs[2]
        assert dead.shards is not None
        lost = len(dead.shards.owned())
        dead.shards._lease = 0  # not revoked: the lease lapses as after SIGKILL
        t2 = time.perf_counter()
        dead.stop(grace=0)
        survivors = aggs[:2]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(d.sync.subscriptions() for d in survivors if d.sync is not None) == n and all(
                    full(d) for d in survivors):
                break
            time.sleep(0.05)
        took = time.perf_counter() - t2
        for d in survivors:
            if not full(d):
                explain(d, survivors, n)
        bound = REPLICA_TTL + 5.0
        print(f"ROW replica death: its {lost} nodes subscribed by the two others again | {took:.1f} s | bound "
              f"replica lease {REPLICA_TTL} s + 5 s | ratio {took / bound:.2f} | target <= 1 | "
              f"{'met' if took <= bound else 'NOT MET'}")
    finally:
        for d in aggs:
            d.stop(grace=0)
        sim.terminate()
        sim.wait()


def _rec(r: NodeRecord | None) -> object:
    """A record as (has_features, state, fingerprint, announced, error, seconds since heard), shortened."""
    if r is None:
        return None
    return (r.has_features, r.state, r.fingerprint[:15], r.announced[:15], r.error[:80],
            round(time.monotonic() - r.heard_at, 1))


def explain(d: AggregatorDaemon, aggs: list[AggregatorDaemon], n: int) -> None:
    """Why replica `d` does not hold every node: per missing node (up to 10) its record, its owner as each replica
    sees it, the document `d` holds, who subscribes to it, and the owner's record, what the owner believes it
    published and what etcd holds (how issue 12's lost nodes were found: a former owner's late write)."""
    assert d.store is not None and d.shards is not None
    recs = {r.key: r for r in d.store.records()}
    names = {id(a): "ABCD"[k] for k, a in enumerate(aggs)}
    missing = [m.address for m in d.inventory.nodes()
               if (r := recs.get(m.address)) is None or not r.has_features or r.state != "OK"]
    print(f"  replica {names[id(d)]} ({d.shards.id}) lacks {len(missing)} of {n} nodes; replicas seen "
          f"{sorted(d.shards.replicas())}")
    for address in missing[:10]:
        doc = d.shards._docs.get(address)
        subs = [names[id(a)] for a in aggs if a.sync is not None and address in a.sync._tasks]
        owners = [a.shards.owner(address) for a in aggs if a.shards is not None]
        print(f"    {address}: record {_rec(recs.get(address))}; owner as seen by each {owners}; doc "
              f"{None if doc is None else (doc.owner, doc.fingerprint[:15], doc.state, doc.error[:60])}; "
              f"subscribed by {subs}")
        for a in aggs:
            sh = a.shards
            assert sh is not None and a.store is not None
            if sh.owner(address) == sh.id:
                kvs, _ = sh.etcd.range_prefix(sh._doc_key(address))
                print(f"      owner {names[id(a)]}: record {_rec(a.store.get(address))}; owned since "
                      f"{sh._owned_since.get(address, 0) - time.monotonic():.1f} s; published "
                      f"{sh._published.get(address)}; in etcd {[v[:120] for _, v in kvs]}")


if __name__ == "__main__":
    main()
