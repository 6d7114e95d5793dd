"""The choice of the inventory's WatchFeatures client (server/inventory/watch_transport.py, SyncConfig.watch_transport).

h2 (the lean client, server/h2/watch.py) makes its TLS from PEM files (SyncConfig.watch_tls); a sync given
only a grpc.ChannelCredentials object (programmatic use) cannot give it any. Such a sync subscribes with the grpc
client and says so once at WARNING, naming what to pass; before, InventorySync.start() raised ValueError. Real
parts: a real node daemon under mutual TLS (the test CA's certificates), a real InventorySync and FeatureStore.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from support_fleet import make_certs, start_node

from nodecompat.fleet.store import STATE_OK, FeatureStore
from nodecompat.server import tls
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.server.inventory.inventory_sync import InventorySync, SyncConfig

pytest.importorskip("nodecompat.server.runtime.runtime", reason="WatchFeatures needs the grpc.aio server runtime")

CHOICE_LOGGER = "nodecompat.server.inventory.watch_transport"


def test_h2_with_credentials_but_no_pem_files_subscribes_over_grpc(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    certs = make_certs(tmp_path / "pki")
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    node = start_node(tmp_path, "h100", "h100-server", credentials=good,
                      args=["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)])
    store = FeatureStore()
    sync = InventorySync(lambda: [FleetNode("h100", node.address, {}, "file")], store, credentials=good,
                         config=SyncConfig(heartbeat=1.0, reconcile_interval=0.2, watch_transport="h2"))
    try:
        with caplog.at_level(logging.WARNING, logger=CHOICE_LOGGER):
            sync.start()  # before: ValueError("--watch-transport h2 under TLS needs the PEM files ...")
            deadline = time.monotonic() + 60
            while (rec := store.get(node.address)) is None or not rec.has_features:
                assert time.monotonic() < deadline, f"no features held for the node: {rec}"
                time.sleep(0.1)
            assert rec.state == STATE_OK and rec.name == "h100", rec
            time.sleep(1.5)  # a heartbeat or more on the stream: nothing else is logged
        warnings = [r for r in caplog.records if r.name == CHOICE_LOGGER and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        message = warnings[0].getMessage()
        assert "grpc client" in message and "watch_tls=ClientTls(ca, cert, key)" in message, message
    finally:
        sync.stop()
        node.terminate()


def test_h2_with_pem_files_or_without_tls_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning is for the fallback only: h2 with the PEM files, h2 in plain text and grpc say nothing."""
    from nodecompat.server.inventory.watch_transport import choose_h2
    from nodecompat.server.tls import ClientTls

    certs = make_certs(tmp_path / "pki")
    with caplog.at_level(logging.WARNING, logger=CHOICE_LOGGER):
        with_files = choose_h2("h2", ClientTls(str(certs.ca), str(certs.cert), str(certs.key)), True, False, 1 << 20)
        plain = choose_h2("h2", None, False, False, 1 << 20)
        grpc_client = choose_h2("grpc", None, True, False, 1 << 20)
        fallback = choose_h2("h2", None, True, False, 1 << 20)
    assert with_files is not None and with_files.ssl is not None
    assert plain is not None and plain.ssl is None
    assert grpc_client is None and fallback is None
    assert len([r for r in caplog.records if r.name == CHOICE_LOGGER]) == 1
    with pytest.raises(ValueError, match="watch transport must be one of grpc, h2"):
        choose_h2("quic", None, False, False, 1 << 20)
