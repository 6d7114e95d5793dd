"""The new streams under mutual TLS and tracing, as the old calls: the aggregator subscribes to mTLS
daemons with its client certificate (answers come from the inventory), a watcher without a valid
certificate is refused, and WatchFeatures / WatchFleet calls are traced (server spans on both ends,
the aggregator's subscription a client span in the same trace as the daemon's server span)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from support_fleet import aggregator, make_certs, make_node_cert, start_aggregator_process, start_node, write_nodes_file
from support_fleetmem import NVIDIA_ONLY
from support_otlp import OtlpReceiver

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server import tls
from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.tls import ClientTls
from nodecompat.v1 import fleet_pb2_grpc, inventory_pb2, node_pb2_grpc

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")


def _first_watch_message(address: str, creds: grpc.ChannelCredentials | None) -> inventory_pb2.WatchFeaturesResponse:
    channel = grpc.secure_channel(address, creds) if creds is not None else grpc.insecure_channel(address)
    stream = node_pb2_grpc.NodeServiceStub(channel).WatchFeatures(inventory_pb2.WatchFeaturesRequest(), timeout=10)
    try:
        return next(stream)
    finally:
        stream.cancel()
        channel.close()


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_inventory_over_mutual_tls(tmp_path: Path, transport: str) -> None:
    certs = make_certs(tmp_path / "pki")
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    procs = [start_node(tmp_path, n, h, args=flags, credentials=good, wait=False)
             for n, h in (("h100", "h100-server"), ("mi300", "amd-mi300"))]
    nodes = tmp_path / "nodes.json"
    write_nodes_file(nodes, procs)
    try:
        for p in procs:
            p.wait_serving()
        assert _first_watch_message(procs[0].address, good).features.node_name == "h100"
        for creds in (tls.channel_credentials(certs.ca), tls.channel_credentials(certs.ca, certs.rogue_cert,
                                                                                  certs.rogue_key)):
            with pytest.raises(grpc.RpcError) as err:
                _first_watch_message(procs[0].address, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with aggregator(nodes_file=str(nodes), node_credentials=good,
                        sync=SyncConfig(heartbeat=1.0, reconcile_interval=0.2, watch_transport=transport,
                                        watch_tls=ClientTls(str(certs.ca), str(certs.cert), str(certs.key)))) as agg:
            deadline = time.monotonic() + 30
            while True:
                with FleetClient(agg.address) as c:  # type: ignore[attr-defined]
                    a = c.validate(spec_text=NVIDIA_ONLY, timeout=10)
                if a.summary.from_inventory == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert {(n.name, n.source, n.compatible) for n in a.nodes} == {
                ("h100", "INVENTORY", True), ("mi300", "INVENTORY", False)}
        # an aggregator without a client certificate holds nothing: every node is asked live (and refused)
        with aggregator(nodes_file=str(nodes), node_credentials=tls.channel_credentials(certs.ca),
                        sync=SyncConfig(heartbeat=1.0, reconcile_interval=0.2, watch_transport=transport,
                                        watch_tls=ClientTls(str(certs.ca)))) as anon:
            time.sleep(1.0)
            with FleetClient(anon.address) as c:  # type: ignore[attr-defined]
                a = c.validate(spec_text=NVIDIA_ONLY, timeout=5)
            assert {(n.source, n.status) for n in a.nodes} == {("LIVE", "UNAVAILABLE")}
            assert anon.store is not None and not any(r.has_features for r in anon.store.records())
    finally:
        for p in procs:
            p.terminate()


@pytest.mark.parametrize("transport", ["grpc", "h2"])
def test_new_streams_are_traced_end_to_end(tmp_path: Path, transport: str) -> None:
    otlp = OtlpReceiver()
    node = start_node(tmp_path, "h100", "h100-server", env=otlp.env("nodecompat-node"))
    nodes = tmp_path / "nodes.json"
    write_nodes_file(nodes, [node])
    agg = start_aggregator_process(tmp_path, "--nodes-file", str(nodes), "--heartbeat", "1",
                                   "--watch-transport", transport, env=otlp.env("nodecompat-aggregator"),
                                   inventory=True)
    try:
        with FleetClient(agg.address) as c:
            deadline = time.monotonic() + 30
            while c.validate(spec_text=NVIDIA_ONLY, timeout=10).summary.from_inventory != 1:
                assert time.monotonic() < deadline, "the node never reached the inventory"
                time.sleep(0.2)
        channel = grpc.insecure_channel(agg.address)
        call = fleet_pb2_grpc.FleetServiceStub(channel).WatchFleet(
            inventory_pb2.WatchFleetRequest(spec=NVIDIA_ONLY), timeout=30)
        items = []
        for item in call:
            items.append(item)
            if item.WhichOneof("item") == "synced":
                break
        call.cancel()  # the watcher leaves: the server's span of the stream ends
        channel.close()
        assert items[0].event.state == inventory_pb2.FleetEvent.COMPATIBLE
        # The WatchFleet server span ends when the server notices the cancel (at its next wake-up, slow on a
        # loaded machine) or at the latest when the aggregator drains: the wait below requires it either way.
        # Ending the aggregator ends its subscription: both ends of the stream close their spans.
        agg.terminate()
        spans = otlp.wait_for(lambda ss: any(
            s.service == "nodecompat-node" and s.name == "/nodecompat.v1.NodeService/WatchFeatures" for s in ss)
            and any(s.service == "nodecompat-aggregator" and s.name == "/nodecompat.v1.FleetService/WatchFleet"
                    for s in ss), timeout=30)
        server = [s for s in spans if s.service == "nodecompat-node"
                  and s.name == "/nodecompat.v1.NodeService/WatchFeatures"]
        client = [s for s in spans if s.service == "nodecompat-aggregator"
                  and s.name == "/nodecompat.v1.NodeService/WatchFeatures"]
        assert client, [(s.service, s.name) for s in spans]
        assert {s.trace_id for s in server} & {s.trace_id for s in client}, "the daemon's span joins the trace"
    finally:
        agg.terminate()
        node.terminate()
        otlp.stop()


def test_pushed_registration_is_fetched_over_mutual_tls_and_traced(tmp_path: Path) -> None:
    """The push model's one-shot fetch (server/inventory/inventory_push.py) uses the aggregator's client certificate
    and is traced like a stream: its client span is exported while the aggregator runs (the call ended:
    no stream is held), in the same trace as the daemon's server span."""
    otlp = OtlpReceiver()
    certs = make_certs(tmp_path / "pki")
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    agg = start_aggregator_process(tmp_path, "--lease-ttl", "6", *flags, credentials=good,
                                   env=otlp.env("nodecompat-aggregator"), inventory=True)
    vm_cert, vm_key = make_node_cert(certs, "vm")  # a registering node's certificate names it
    node = start_node(tmp_path, "vm", "plain-vm", credentials=good, env=otlp.env("nodecompat-node"),
                      args=["--tls-cert", str(vm_cert), "--tls-key", str(vm_key), "--tls-ca", str(certs.ca),
                            "--register", agg.address])
    try:
        with FleetClient(agg.address, credentials=good) as c:
            deadline = time.monotonic() + 30
            while (a := c.validate(spec_text=NVIDIA_ONLY, timeout=10)).summary.from_inventory != 1:
                assert time.monotonic() < deadline, "the registered node never reached the inventory"
                time.sleep(0.2)
        assert [(n.name, n.source, n.compatible) for n in a.nodes] == [("vm", "INVENTORY", False)]
        spans = otlp.wait_for(lambda ss: any(
            s.service == "nodecompat-aggregator" and s.name == "/nodecompat.v1.NodeService/WatchFeatures"
            for s in ss) and any(s.service == "nodecompat-node" and s.name == "/nodecompat.v1.NodeService/WatchFeatures"
                                 for s in ss), timeout=30)
        assert agg.proc.poll() is None  # exported while the aggregator runs: the fetch's call has ended
        server = [s for s in spans if s.service == "nodecompat-node"
                  and s.name == "/nodecompat.v1.NodeService/WatchFeatures"]
        client = [s for s in spans if s.service == "nodecompat-aggregator"
                  and s.name == "/nodecompat.v1.NodeService/WatchFeatures"]
        assert {s.trace_id for s in server} & {s.trace_id for s in client}, "the daemon's span joins the trace"
    finally:
        node.terminate()
        agg.terminate()
        otlp.stop()
