"""bench_inventory.py's WatchFeatures simulator (its child process, started as `bench_inventory.py --serve-simulator
PORT_FILE [--profiles K] [--older-daemons]`, env BENCH_SIM_NODES, BENCH_SIM_SENT: a file written once every node has
answered a resubscribe with its features omitted): one process answering WatchFeatures for every
simulated node (each its own loopback address, bench_inventory.node_address), used by bench_inventory.py,
bench_store_etcd.py's `sharded` rows and tests/test_store_etcd_shards.py (older daemons). In its own module: it is
the part other benches and tests share, and bench_inventory.py stays under the ~400-line rule.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

from bench_inventory import profiles


def node_messages(n_nodes: int, n_profiles: int, probed_at_ns: int, older: bool = False,
                  omitted: dict[str, list[tuple[bytes, bytes]]] | None = None) -> tuple[list[bytes], list[bytes]]:
    """Each simulated node's serialized WatchFeaturesResponse messages: (first: its features, heartbeat), node i of
    profile i % n_profiles, named sim-{i:05d}. What a current daemon sends (server/node/feature_watch.py on_round:
    its profile without usage values, its nodename in, the fingerprint computed from exactly that); older: what a
    daemon from before volatile values sends (usage values in, memory.size available_bytes differing per node, and
    a fingerprint computed over them). Used by serve_simulator and bench/streams_breakdown.py. `omitted`, when
    given, gets fingerprint -> [(first message with its features omitted, heartbeat)] per node of that set: what
    the daemon answers a request whose known_fingerprint is its current one (server/node/feature_watch.py: the
    first message without features, features_omitted, its round id, probe time, name and fingerprint), here a
    round later (round 2, probed 1 s after `probed_at_ns`: its as_of tells an aggregator's resubscribe happened)."""
    import hashlib

    from nodecompat import wire
    from nodecompat.fleet.fingerprint import canonical_bytes, fingerprint, split_identity
    from nodecompat.fleet.volatile import strip_volatile
    from nodecompat.v1 import inventory_pb2

    first: list[bytes] = [b""] * n_nodes
    heartbeats: list[bytes] = [b""] * n_nodes
    for k, f in enumerate(profiles(n_profiles)):
        sent = f if older else strip_volatile(f)
        base = inventory_pb2.FeaturesChange(node_name="sim", round_id=1, features=wire.features_to_proto(sent))
        base.probed_at.FromNanoseconds(probed_at_ns)
        fp = ""
        for i in range(k, n_nodes, n_profiles):
            m = inventory_pb2.FeaturesChange()
            m.CopyFrom(base)
            m.node_name = f"sim-{i:05d}"
            m.features.attributes["system.name"].elements["nodename"] = m.node_name
            if older:  # its usage value in, and in its fingerprint
                m.features.attributes["memory.size"].elements["available_bytes"] = str((4 << 30) + i * 4096)
                shared, _ = split_identity(wire.features_from_proto(m.features))
                m.fingerprint = "sha256:" + hashlib.sha256(canonical_bytes(shared)).hexdigest()
            else:  # computed from the message itself (identity left out: one per profile)
                fp = m.fingerprint = fp or fingerprint(wire.features_from_proto(m.features))
            first[i] = inventory_pb2.WatchFeaturesResponse(features=m).SerializeToString()
            heartbeats[i] = inventory_pb2.WatchFeaturesResponse(heartbeat=inventory_pb2.FeaturesHeartbeat(
                round_id=1, fingerprint=m.fingerprint, heartbeat_seconds=10)).SerializeToString()
            if omitted is not None:  # a round later (the daemon probed meanwhile), the same features
                m.ClearField("features")
                m.features_omitted, m.round_id = True, 2
                m.probed_at.FromNanoseconds(probed_at_ns + 1_000_000_000)
                omitted.setdefault(m.fingerprint, []).append(
                    (inventory_pb2.WatchFeaturesResponse(features=m).SerializeToString(), heartbeats[i]))
    return first, heartbeats


def serve_simulator(port_file: str, n_profiles: int, older: bool = False) -> None:
    """Serve WatchFeatures for BENCH_SIM_NODES nodes (env, default 10,000) of `n_profiles` profiles on 0.0.0.0;
    the port is written to `port_file` once every message is built. Each node sends what a current daemon sends
    (server/node/feature_watch.py on_round: its profile without usage values, the fingerprint computed from exactly
    that, its nodename in), then heartbeats naming that fingerprint. older: what a daemon from before volatile
    values sends instead (its features with usage values, memory.size available_bytes differing per node, and a
    fingerprint computed over them): the aggregator's announced != fingerprint path (NodeRecord.announced).
    A request whose known_fingerprint is one of the nodes' current fingerprints is answered as an unchanged daemon
    answers it: features omitted (the next node of that set; the simulator cannot tell which loopback address was
    dialled, and the nodes of one set differ only in their name, which a nodes file overrides)."""
    import grpc

    from nodecompat.v1 import inventory_pb2

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Every node's first message is built and serialized before the port is published: the simulator stands
    # in for 10,000 daemons on their own machines, so its own per-stream work is kept to sending bytes
    # (the aggregator receives exactly what a daemon sends; it does all of its own work).
    n_nodes = int(os.environ.get("BENCH_SIM_NODES", "10000"))
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    tune_for_serving()
    omitted: dict[str, list[tuple[bytes, bytes]]] = {}
    first, heartbeats = node_messages(n_nodes, n_profiles, time.time_ns(), older, omitted)
    counter = [0]
    counters = dict.fromkeys(omitted, 0)
    sent_file = os.environ.get("BENCH_SIM_SENT", "")  # written once n_nodes omitted first messages were sent
    sent = [0]

    async def watch(request, context):  # type: ignore[no-untyped-def]
        same = omitted.get(request.known_fingerprint)
        if same is not None:  # an unchanged daemon's answer to a reconnect
            j = counters[request.known_fingerprint]
            counters[request.known_fingerprint] = j + 1
            msg, beat = same[j % len(same)]
        else:
            i = counter[0] % n_nodes
            counter[0] += 1
            msg, beat = first[i], heartbeats[i]
        yield msg
        if same is not None:
            sent[0] += 1
            if sent[0] == n_nodes and sent_file:
                Path(sent_file).write_text(f"{time.time():.3f}")
        while True:
            await asyncio.sleep(request.heartbeat_seconds or 10)
            yield beat

    handler = grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
        "WatchFeatures": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString, response_serializer=None),
    })

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("0.0.0.0:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(run())
