"""The fleet's memory at scale (issue 12 item 7): 10,000 simulated nodes in 20 hardware profiles.

Figures, each with its limit from the issue and the ratio figure/limit (<= 1.0 holds):
- ValidateFleet from the inventory: the aggregator's answer for 10,000 nodes (plan: one evaluation per
  distinct set + 10,000 NodeResults, or the grouped form + summary with why-not counts, to the bytes sent),
  in-process, cold (new spec, no node's pieces kept: server/fleet/fleet_bytes.py), warm, and per node a
  probe round later (every node's probe time moved, so its as_of is serialized again); and the same call
  end to end over gRPC, the caller reading every node's result: one NodeResult per node (callers that do
  not set grouped_results), grouped_results (what FleetClient asks for) and per node a probe round later,
  alternated in the same run. `--validate-only` stops after these rows.
- Memory per node beyond the shared feature sets: tracemalloc growth of the FeatureStore from 20 nodes
  (one per profile) to 10,000, divided by the 9,980 added nodes; plus the aggregator process's RSS growth
  per node while it holds 10,000 WatchFeatures subscriptions (channels, streams, coroutines).
- Registered nodes (the push model, server/inventory/inventory_push.py; bench/inventory_push_sim.py): the aggregator's
  RSS growth per registered node while 10,000 simulated daemons heartbeat with their fingerprints (one
  connection per heartbeat to the aggregator, closed after it, as LeaseKeeper does; no stream held by it),
  measured in a process of its own, and the full re-registration after a restart (all 10,000 registering at
  once until each one's features are fetched and held). The streams row above is what nodes from a nodes file
  or DNS cost.
- Full resubscribe after an aggregator restart: a fresh InventorySync (empty store, as after a restart without a
  snapshot) subscribing to 10,000 nodes until every node's features are held; then a real aggregator process
  restarted with a snapshot of the 10,000 (--state-file): exec to all held, exec to all resubscribed (the daemons
  answer with their features omitted; bench/inventory_restart_sim.py stream_restart_rows). One simulator process serves
  WatchFeatures for every node on 0.0.0.0:PORT; each node is its own loopback address 127.x.y.z:PORT
  (as bench_fleet.py does), so there is one TCP connection and one stream per node. The simulator sends
  bytes serialized before the clock starts (it stands in for 10,000 machines; the aggregator receives what
  daemons send and does all its own work); the aggregator's and the simulator's CPU seconds are printed,
  since both share this machine's CPUs. bench/streams_breakdown.py splits the streams RSS row into its stages
  (channels connected, streams open, first messages held; glibc malloc vs Python; with or without mTLS).
  The streamed rows are printed for both clients of the streams (`aggregator --watch-transport`): grpc (a gRPC
  core channel each) and h2 (server/h2/watch.py); `--streams-only --watch-transport T` runs one.

This process stands in for the aggregator process, so it sets malloc's arenas and the garbage collector as
`nodecompat aggregator` does before it starts (server/runtime/malloc_tuning.py limit_arenas, server/runtime/gc_tuning.py
tune_for_serving); the simulator sets it the same
way (it stands in for 10,000 machines: its collector walking 10,000 streams is no aggregator cost).

Profiles are the three fixture hosts (real probes) with per-profile kernel versions and modules; each
node has its own system.name.nodename. `--nodes` and `--profiles` scale it down for a quick look.

    .venv/bin/python bench/bench_inventory.py [--nodes 10000] [--profiles 20]

No asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_VALIDATE_S = 0.100
LIMIT_NODE_BYTES = 10 * 1024
LIMIT_RESUBSCRIBE_S = 10.0

SPEC = """
version: v1alpha1
compatibilities:
- description: gpu
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions: {vendor: {op: In, value: ["10de"]}}
    - feature: kernel.loadedmodule
      matchExpressions: {nvidia: {op: Exists}}
- description: new kernel
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.version
      matchExpressions: {major: {op: Gt, value: ["5"]}}
"""


def profiles(n: int) -> list:  # type: ignore[type-arg]
    """n distinct feature sets (nodecompat.features.Features) from the fixture hosts."""
    from nodecompat.hostroot import HostRoot
    from nodecompat.probes.runner import probe_once

    hosts = ROOT / "tests" / "fixtures" / "hosts"
    bases = [probe_once(HostRoot(hosts / h)).features for h in ("h100-server", "amd-mi300", "plain-vm")]
    out = []
    for k in range(n):
        f = copy.deepcopy(bases[k % len(bases)])
        f.add_attributes("kernel.version", {"major": str(5 + k % 3), "minor": str(k), "full": f"{5 + k % 3}.{k}.0"})
        f.add_flags("kernel.loadedmodule", {f"bench_profile_{k}"})
        out.append(f)
    return out


def node_address(i: int, port: int) -> str:
    return f"127.{1 + i // 62500}.{(i // 250) % 250}.{1 + i % 250}:{port}"


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_cpu(pid: str) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def row(name: str, value: float, unit: str, limit: float) -> None:
    """One `ROW` line in bench/report.py's format; the limit is the issue's absolute figure."""
    if unit == "s":
        shown = f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
        lim = f"{limit * 1e3:.0f} ms" if limit < 1 else f"{limit:g} s"
    else:
        shown, lim = f"{value:,.0f} B", f"{limit:,.0f} B"
    ratio = value / limit
    print(f"ROW {name} | {shown} | issue 12 limit {lim} | ratio {ratio:.2f} | target <= 1 "
          f"| {'met' if ratio <= 1 else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--profiles", type=int, default=20)
    ap.add_argument("--serve-simulator", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--older-daemons", action="store_true", help=argparse.SUPPRESS)  # the simulator's `older`
    ap.add_argument("--push-only", action="store_true", help="only the registered-node (push model) rows")
    ap.add_argument("--burst-only", action="store_true",
                    help="with --push-only: the floor and the re-registration row alone (no rest, no restart rows)")
    ap.add_argument("--streams-only", action="store_true",
                    help="only the resubscribe and streams RSS rows (nodes file / DNS nodes), in a fresh process")
    ap.add_argument("--watch-transport", choices=["grpc", "h2"], default="h2",
                    help="the streams' client in the resubscribe rows (SyncConfig.watch_transport)")
    ap.add_argument("--validate-only", action="store_true",
                    help="only the memory and ValidateFleet rows (no resubscribe, no push model)")
    ap.add_argument("--lease-ttl", type=float, default=30.0,
                    help="the aggregator's lease in the push rows (heartbeats every third; 30 s as shipped)")
    args = ap.parse_args()
    if args.serve_simulator:  # the simulator (child process): bench/inventory_stream_sim.py
        from inventory_stream_sim import serve_simulator  # type: ignore[import-not-found]

        serve_simulator(args.serve_simulator, args.profiles, args.older_daemons)
        return
    sys.path.insert(0, str(ROOT))
    from nodecompat.server.runtime.malloc_tuning import limit_arenas

    limit_arenas()  # as `nodecompat aggregator` does, before any thread starts (module doc)
    if args.streams_only:  # the resubscribe and streams RSS rows alone, in a process of their own
        from nodecompat.server.runtime.gc_tuning import tune_for_serving as tune

        tune()  # as `nodecompat aggregator` does at start (module doc)
        streams_part(args.nodes, args.profiles, Path(tempfile.mkdtemp(prefix="bench-inventory-")), args.watch_transport)
        return
    if args.push_only:
        from nodecompat.server.runtime.gc_tuning import tune_for_serving

        tune_for_serving()
        push_part(args.nodes, args.profiles, args.lease_ttl, args.burst_only)
        return
    from nodecompat.engine.spec import parse_spec
    from nodecompat.fleet.fingerprint import split_identity
    from nodecompat.fleet.store import FeatureStore, spec_key
    from nodecompat.server.fleet.fleet_bytes import NodeBytes, serialize_or_pass, summary_message
    from nodecompat.server.fleet.fleet_results import fleet_summary
    from nodecompat.server.inventory.fleet_nodes import FleetNode
    from nodecompat.server.inventory.inventory_answers import finish_summary, plan
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    n, k, lease_ttl = args.nodes, args.profiles, args.lease_ttl
    print(f"inventory: {n} simulated nodes in {k} profiles; {os.cpu_count()} CPUs")
    profs = profiles(k)
    tune_for_serving()  # as `nodecompat aggregator` does at start (module doc)
    nodes = [FleetNode(f"sim-{i:05d}", node_address(i, 1), {"profile": str(i % k)}, "file") for i in range(n)]

    # -- memory per node beyond the shared sets --------------------------------------------------------
    gc.collect()
    tracemalloc.start()
    store = FeatureStore()
    for i in range(k):
        f = copy.deepcopy(profs[i])
        f.add_attributes("system.name", {"nodename": nodes[i].name})
        store.put(nodes[i].address, nodes[i].name, f, {}, time.time(), 1, wire_key=f"profile-{i}")
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    now = time.time()
    for i in range(k, n):
        ident = (("system.name", "nodename", nodes[i].name),)
        store.put_known(f"profile-{i % k}", nodes[i].address, nodes[i].name, ident, now, 1, {"profile": str(i % k)})
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    shared = store.set_bytes()
    print(f"  distinct feature sets held: {store.distinct_sets()} ({shared / 1024:.0f} KiB canonical)")
    row(f"store memory per node beyond the shared sets ({n - k} nodes)", grown / max(1, n - k), "B", LIMIT_NODE_BYTES)
    assert split_identity  # (imported for the reader: identity is what stays per node)

    # -- ValidateFleet from the inventory, in-process --------------------------------------------------
    spec = parse_spec(SPEC)
    skey = spec_key(SPEC, False)

    node_bytes = NodeBytes()  # as FleetService keeps it

    def answer(grouped: bool) -> float:
        """plan() to every message's bytes, as FleetService.ValidateFleet answers (the messages serialized)."""
        t0 = time.perf_counter()
        p = plan(store, nodes, spec, skey, [], 0.0, grouped=grouped, node_bytes=node_bytes)
        s = fleet_summary(p, p.ranking, "", "", 0.0)
        finish_summary(s, p, [], 0)
        sent = [serialize_or_pass(m) for m in p.batches] + [summary_message(s, p.ranking)]
        assert p.answered == n and not p.live and s.compatible + s.incompatible == n and sent
        return time.perf_counter() - t0

    cold = answer(False)
    row(f"ValidateFleet from inventory, in-process, cold ({k} evaluations)", cold, "s", LIMIT_VALIDATE_S)
    for grouped in (False, True):
        warm = sorted(answer(grouped) for _ in range(5))
        row(f"ValidateFleet from inventory, in-process, warm, {'grouped' if grouped else 'per node'} (median of 5)",
            warm[2], "s", LIMIT_VALIDATE_S)

    def round_later() -> float:
        """answer(False) after every node's next probe round (same features: a heartbeat moves its probe
        time, so every as_of changes and NodeBytes serializes it again), as between two calls a minute apart."""
        later = time.time()
        for rec in store.records():
            store.heartbeat(rec.key, rec.round_id + 1, rec.fingerprint, later)
        return answer(False)

    moved = sorted(round_later() for _ in range(5))
    row("ValidateFleet from inventory, in-process, per node, a probe round later (every as_of moved; median of 5)",
        moved[2], "s", LIMIT_VALIDATE_S)

    # -- the same over gRPC, through the client --------------------------------------------------------
    from nodecompat.clients.fleet_client import FleetClient
    from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon

    tmp = Path(tempfile.mkdtemp(prefix="bench-inventory-"))
    nodes_file = tmp / "nodes.json"
    nodes_file.write_text(json.dumps([{"name": x.name, "address": x.address, "labels": x.labels} for x in nodes]))
    agg = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", nodes_file=str(nodes_file), sync=None))
    agg.service.store = store
    port = agg.start()
    try:
        import grpc

        from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 16 << 20)])
        stub = fleet_pb2_grpc.FleetServiceStub(channel)
        per_node = fleet_pb2.ValidateFleetRequest(spec=SPEC, timeout_seconds=60)
        grouped = fleet_pb2.ValidateFleetRequest(spec=SPEC, timeout_seconds=60, grouped_results=True)

        def call(req: fleet_pb2.ValidateFleetRequest) -> tuple[float, int, float]:
            """One call; every node's name, address, verdict and probe time is read (the caller's view)."""
            t0 = time.perf_counter()
            got, wall = 0, 0.0
            for item in stub.ValidateFleet(req, timeout=90):
                kind = item.WhichOneof("item")
                if kind == "nodes":
                    for r in item.nodes.nodes:
                        _ = (r.node_name, r.address, r.compatible, r.as_of.seconds)
                        got += 1
                elif kind == "groups":
                    for g in item.groups.groups:
                        _ = (g.result.compatible, list(g.node_names), list(g.addresses), list(g.as_of_seconds))
                        got += len(g.node_names)
                elif kind == "node":
                    got += 1
                else:
                    wall = item.summary.wall_seconds
            return time.perf_counter() - t0, got, wall

        call(per_node)
        call(grouped)
        old_runs: list[tuple[float, int, float]] = []
        new_runs: list[tuple[float, int, float]] = []
        moved_runs: list[tuple[float, int, float]] = []
        for _ in range(5):  # alternated: a neighbour's load weighs on all forms alike
            old_runs.append(call(per_node))
            new_runs.append(call(grouped))
            later = time.time()  # every node's next probe round (as round_later above), then per node again
            for rec in store.records():
                store.heartbeat(rec.key, rec.round_id + 1, rec.fingerprint, later)
            moved_runs.append(call(per_node))
        for name, runs in (("one NodeResult per node (callers without grouped_results)", old_runs),
                           ("grouped_results (FleetClient)", new_runs),
                           ("one NodeResult per node, a probe round later (every as_of moved)", moved_runs)):
            runs.sort()
            took, _, server_wall = runs[len(runs) // 2]
            assert all(r[1] == n for r in runs), [r[1] for r in runs]
            row(f"ValidateFleet from inventory over gRPC, all {n} results read by the caller, {name}", took, "s",
                LIMIT_VALIDATE_S)
            print(f"  (median of {len(runs)}; min {runs[0][0] * 1e3:.1f} ms, max {runs[-1][0] * 1e3:.1f} ms; "
                  f"the aggregator's own wall time {server_wall * 1e3:.1f} ms; loadavg {loadavg()})")
        with FleetClient(f"127.0.0.1:{port}") as client:
            t0 = time.perf_counter()
            a = client.validate(spec_text=SPEC, timeout=60)
            built = (time.perf_counter() - t0) * 1e3
            print(f"  (through FleetClient, grouped, {n} NodeVerdict dataclasses built: {built:.0f} ms; "
                  f"summary: {a.summary.from_inventory} from the inventory, "
                  f"{a.summary.distinct_feature_sets} distinct sets)")
        channel.close()
    finally:
        agg.stop(grace=0)
    if args.validate_only:
        return

    # the streamed rows with either client (SyncConfig.watch_transport), each in a fresh process: in one process the
    # second transport's allocations took the heap pages the first one's stop() freed, and its RSS growth per node read
    # negative (-5,145 B for h2 after grpc)
    for transport in ("grpc", "h2"):
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--streams-only", "--watch-transport", transport, "--nodes", str(n),
                        "--profiles", str(k)], check=True)
    # in a fresh process: here, the heap pages the rows above freed would take the push model's allocations and
    # its RSS growth would read a third of what it is (bench/inventory_push_sim.py, module doc)
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--push-only", "--nodes", str(n), "--profiles", str(k), "--lease-ttl",
                    str(lease_ttl)], check=True)


def streams_part(n: int, k: int, tmp: Path, transport: str = "h2") -> None:
    """The streamed-node rows: a fresh InventorySync subscribing to `n` simulated nodes in `k` profiles, each node
    its own loopback address (module doc); tmp: a directory for the simulator's port file; transport:
    SyncConfig.watch_transport of the fresh InventorySync and the restarted aggregator process's --watch-transport."""
    from inventory_push_sim import count_held  # type: ignore[import-not-found]

    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server.inventory.fleet_nodes import FleetNode
    from nodecompat.server.inventory.inventory_sync import InventorySync, SyncConfig

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port_file = tmp / "port"
    sim = subprocess.Popen([sys.executable, __file__, "--serve-simulator", str(port_file), "--profiles", str(k)],
                           env={**os.environ, "BENCH_SIM_NODES": str(n)})
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        sim_port = int(port_file.read_text())
        members = [FleetNode(f"sim-{i:05d}", node_address(i, sim_port), {"profile": str(i % k)}, "file")
                   for i in range(n)]
        fresh = FeatureStore()
        held, all_held = count_held(fresh, n)
        gc.collect()
        rss0 = rss_bytes()
        cpu0, sim0 = process_cpu("self"), process_cpu(str(sim.pid))
        # what the aggregator ships with (max_connecting, connect slot)
        config = SyncConfig(heartbeat=10.0, watch_transport=transport)
        sync = InventorySync(lambda: members, fresh, config=config)
        t0 = time.perf_counter()
        sync.start()
        all_held.wait(120)
        took = time.perf_counter() - t0
        cpu1, sim1 = process_cpu("self"), process_cpu(str(sim.pid))
        rss1 = rss_bytes()
        row(f"full resubscribe after a restart ({held[0]}/{n} nodes held, {config.max_connecting} connecting at once, "
            f"{transport})",
            took, "s", LIMIT_RESUBSCRIBE_S)
        print(f"  (aggregator CPU {cpu1 - cpu0:.2f} s = {(cpu1 - cpu0) / n * 1e3:.2f} ms a node; the simulator's "
              f"{sim1 - sim0:.2f} s on the same {os.cpu_count()} CPUs; loadavg {loadavg()})")
        row(f"aggregator RSS growth per nodes file / DNS node (streams): {n} subscriptions (channels, streams, "
            f"store; {transport})", (rss1 - rss0) / max(1, n), "B", LIMIT_NODE_BYTES)
        from inventory_restart_sim import stream_restart_rows, stream_snapshot  # type: ignore[import-not-found]

        snap = stream_snapshot(members, fresh, tmp)
        sync.stop()
    finally:
        sim.terminate()
        sim.wait()
    stream_restart_rows(n, k, snap, sim_port, tmp, node_address, row, process_cpu, LIMIT_RESUBSCRIBE_S, transport)


def push_part(n: int, k: int, lease_ttl: float, burst_only: bool = False) -> None:
    """The registered-node figures: the push model (bench/inventory_push_sim.py); burst_only: the floor and the
    re-registration row alone."""
    import secrets

    from inventory_push_sim import push_rows  # type: ignore[import-not-found]
    from inventory_restart_sim import restart_rows  # type: ignore[import-not-found]

    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    state, seed = tmp / "inventory.state", secrets.token_hex(8)
    ports = push_rows(n, k, row, rss_bytes, process_cpu, LIMIT_NODE_BYTES, LIMIT_RESUBSCRIBE_S, lease_ttl=lease_ttl,
                      state_file=state, seed=seed, burst_only=burst_only)
    sys.stdout.flush()
    if burst_only:
        return
    # the restart rows: an aggregator process started on the snapshot the push rows' aggregator wrote at its stop
    restart_rows(n, k, lease_ttl, state, ports, seed, row, process_cpu, LIMIT_RESUBSCRIBE_S)


if __name__ == "__main__":
    main()
