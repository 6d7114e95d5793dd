"""Messages at the size limits pass through the aggregator's own channels, with their options.

The aggregator's channels to nodes carry gRPC core options chosen for memory (server/inventory/inventory_sync.py
CHANNEL_OPTIONS: the subscriptions; server/fleet/channel_pool.py CHANNEL_OPTIONS: the fan-out pool; what each
saves is measured by bench/channel_args.py). None of them may cost an answer: a features message just under the
inventory's limit (MAX_FEATURES_MESSAGE_BYTES) arrives whole on a subscription, in plain text and under mutual
TLS (whose records this side writes are 1 KiB: grpc.tsi.max_frame_size), and a ValidateImage answer near the
gRPC message limit (16 MiB) reaches the fan-out, whose ValidateFleet answer (several MiB of reasons) reaches the
client. The refusal past the inventory's limit is tests/test_inventory_big_features.py.

Real parts: real gRPC servers on real ports (one replaying the messages, with the test CA's certificates when
mutual TLS), a real InventorySync and FeatureStore, a real in-process aggregator with a nodes file and the
real FleetClient.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from support_fleet import aggregator, free_port, make_certs

from nodecompat import wire
from nodecompat.clients.fleet_client import FleetClient
from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.fleet.store import STATE_OK, FeatureStore
from nodecompat.server import tls
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import MAX_FEATURES_MESSAGE_BYTES, InventorySync, SyncConfig
from nodecompat.server.runtime.grpc_server import MAX_MESSAGE_BYTES
from nodecompat.v1 import inventory_pb2, node_pb2

SERVICE = "nodecompat.v1.NodeService"
BIG = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def max_features_message(name: str) -> tuple[bytes, bytes, str, int]:
    """(first message, heartbeat, fingerprint, flags) for node `name`: features of cpu.cpuid flags filling a
    WatchFeaturesResponse to within 16 KiB under MAX_FEATURES_MESSAGE_BYTES."""
    change = inventory_pb2.FeaturesChange(node_name=name, round_id=1)
    change.features.attributes["system.name"].elements["nodename"] = name
    change.probed_at.GetCurrentTime()
    flags = change.features.flags["cpu.cpuid"].elements
    target = MAX_FEATURES_MESSAGE_BYTES - (16 << 10)
    i = 0
    while (size := change.ByteSize()) < target - (64 << 10):  # in steps, then the rest at once
        flags.extend(f"FLAG{i + j:08d}" for j in range(4096))
        i += 4096
    rest = (target - size) // 14  # each flag adds 14 bytes: its tag, its length and 12 characters
    flags.extend(f"FLAG{i + j:08d}" for j in range(rest))
    change.fingerprint = fingerprint(wire.features_from_proto(change.features))
    first = inventory_pb2.WatchFeaturesResponse(features=change).SerializeToString()
    assert MAX_FEATURES_MESSAGE_BYTES - (16 << 10) - 64 <= len(first) < MAX_FEATURES_MESSAGE_BYTES, len(first)
    beat = inventory_pb2.WatchFeaturesResponse(heartbeat=inventory_pb2.FeaturesHeartbeat(
        round_id=1, fingerprint=change.fingerprint, heartbeat_seconds=1)).SerializeToString()
    return first, beat, change.fingerprint, len(flags)


def serve(handlers: dict[str, grpc.RpcMethodHandler], certs_dir: Path | None = None) -> tuple[grpc.Server, str]:
    """A real gRPC server for NodeService `handlers` on 127.0.0.1 (mutual TLS with the test CA's leaf)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=BIG)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    address = f"127.0.0.1:{free_port()}"
    if certs_dir is None:
        server.add_insecure_port(address)
    else:
        creds = grpc.ssl_server_credentials(
            [((certs_dir / "leaf.key").read_bytes(), (certs_dir / "leaf.crt").read_bytes())],
            root_certificates=(certs_dir / "ca.crt").read_bytes(), require_client_auth=True)
        server.add_secure_port(address, creds)
    server.start()
    return server, address


@pytest.mark.parametrize("mutual_tls", [False, True], ids=["plain", "mtls"])
def test_a_features_message_just_under_the_limit_arrives_whole(tmp_path: Path, mutual_tls: bool) -> None:
    first, beat, fp, n_flags = max_features_message("max-1")
    sent = [0]

    def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        sent[0] += 1
        yield first
        while context.is_active():
            time.sleep(0.5)
            yield beat

    certs = make_certs(tmp_path / "certs") if mutual_tls else None
    server, address = serve({"WatchFeatures": grpc.unary_stream_rpc_method_handler(watch)},
                            certs.dir if certs else None)
    credentials = tls.channel_credentials(certs.ca, certs.cert, certs.key) if certs else None
    store = FeatureStore()
    sync = InventorySync(lambda: [FleetNode("max-1", address, {}, "file")], store, credentials=credentials,
                         config=SyncConfig(heartbeat=1.0, stale_after=5.0, reconcile_interval=0.2))
    try:
        sync.start()
        deadline = time.monotonic() + 60
        while (rec := store.get(address)) is None or not rec.has_features:
            assert time.monotonic() < deadline, f"no features held for the node: {rec}"
            time.sleep(0.1)
        assert rec.state == STATE_OK and rec.fingerprint == fp, rec
        held = store.node_features(rec)
        assert held is not None
        assert len(held[0].flags["cpu.cpuid"].elements) == n_flags
        time.sleep(3.5)  # heartbeats past the stale bound's half: the stream stays up and renews the node
        rec = store.get(address)
        assert rec is not None and rec.state == STATE_OK and rec.fingerprint == fp, rec
        assert sent[0] == 1, "the stream was opened again"
    finally:
        sync.stop()
        server.stop(0)


@pytest.mark.parametrize("mutual_tls", [False, True], ids=["plain", "mtls"])
def test_a_validate_answer_near_the_message_limit_reaches_the_fleet_answer(tmp_path: Path, mutual_tls: bool) -> None:
    """Three nodes answer ValidateImage with ~12 MiB each (their NFD JSON, plus a 1 MiB failure reason); the live
    fan-out sends each a spec near MAX_SPEC_BYTES and takes the answer through the pool's channel (its TLS records
    4 KiB at most); ValidateFleet's answer carries every reason."""
    detail = "x" * (1 << 20)
    resp = node_pb2.ValidateImageResponse(compatible=False)
    resp.report.nfd_json = "n" * (MAX_MESSAGE_BYTES - (4 << 20))
    s = resp.report.sets.add(index=0, rules_total=1)
    rule = s.rules.add(name="big")
    term = rule.match_features.add(feature="kernel.version", feature_present=True)
    term.expressions.add(feature="kernel.version", element="major", op="Gt", detail=detail)
    answer = resp.SerializeToString()
    assert MAX_MESSAGE_BYTES - (4 << 20) < len(answer) < MAX_MESSAGE_BYTES

    specs: list[str] = []

    def validate(request: bytes, context: grpc.ServicerContext) -> bytes:
        specs.append(node_pb2.ValidateImageRequest.FromString(request).spec)
        return answer

    certs = make_certs(tmp_path / "certs") if mutual_tls else None
    servers = [serve({"ValidateImage": grpc.unary_unary_rpc_method_handler(validate)}, certs.dir if certs else None)
               for _ in range(3)]
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps([{"name": f"big-{i}", "address": a} for i, (_, a) in enumerate(servers)]))
    spec = ("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: big\n    matchFeatures:\n"
            "    - feature: kernel.version\n      matchExpressions: {major: {op: Gt, value: ['4']}}\n")
    spec += "#" + "p" * (MAX_SPEC_BYTES - len(spec) - 1024) + "\n"  # a comment: the spec just under its limit
    node_credentials = tls.channel_credentials(certs.ca, certs.cert, certs.key) if certs else None
    try:
        with aggregator(nodes_file=str(nodes), check_new_nodes=False, node_credentials=node_credentials) as agg, \
                FleetClient(agg.address) as client:  # type: ignore[attr-defined]
            ans = client.validate(spec_text=spec, timeout=60)
        assert len(ans.nodes) == 3
        for node in ans.nodes:
            assert node.status == "OK", node
            assert not node.compatible
            assert any(detail in r for r in node.reasons), [r[:80] for r in node.reasons]
        assert specs == [spec] * 3
    finally:
        for server, _ in servers:
            server.stop(0)
