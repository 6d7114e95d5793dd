"""Aggregator replicas over an etcd that serves HTTPS and requires client certificates (issue 14, "etcd TLS
flags"): `--store-ca/--store-cert/--store-key` (server/inventory/store_etcd.py); certificates from tests/support_fleet's
openssl test CA. A replica started from the CLI with the flags and an in-process one with the same files
share a registration; a replica without a client certificate, one trusting another CA, and one speaking
plain HTTP are refused by etcd and say UNAVAILABLE naming etcd; flags that cannot work are refused at start."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from support_daemon import stop_process
from support_etcd import WATCH_READ_TIMEOUT, Etcd, start_etcd, wait_for
from support_fleet import Certs, make_certs, start_aggregator_process
from test_store_etcd_failover import listed

from nodecompat.clients.cli import build_parser
from nodecompat.clients.cmd_aggregator import build_config
from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
from nodecompat.server.inventory.registration_auth import RegistrationPolicy
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

OPEN = RegistrationPolicy(allow_unauthenticated=True)


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Etcd, Certs]]:
    certs = make_certs(tmp_path_factory.mktemp("etcd-certs"))
    e = start_etcd(tmp_path_factory.mktemp("etcd-tls"), tls=certs)
    try:
        yield e, certs
    finally:
        stop_process(e.proc, 5.0)


def _in_process(store: str, prefix: str, **tls: object) -> AggregatorDaemon:
    d = AggregatorDaemon(AggregatorConfig(listen="127.0.0.1:0", lease_ttl=600.0, registration=OPEN, sync=None,
                                          store=store, store_prefix=prefix, **tls,  # type: ignore[arg-type]
                                          store_watch_read_timeout=WATCH_READ_TIMEOUT))
    d.address = f"127.0.0.1:{d.start()}"  # type: ignore[attr-defined]
    return d


def _register(address: str, name: str, node: str) -> None:
    with grpc.insecure_channel(address) as ch:
        fleet_pb2_grpc.FleetServiceStub(ch).RegisterNode(
            fleet_pb2.RegisterNodeRequest(name=name, address=node), timeout=15)


def test_replicas_share_registrations_over_etcd_https_with_client_certificates(
    tls_etcd: tuple[Etcd, Certs], tmp_path  # type: ignore[no-untyped-def]
) -> None:
    e, certs = tls_etcd
    prefix = f"/tls-{uuid.uuid4().hex}/"
    a = start_aggregator_process(tmp_path, "--store", e.url, "--store-prefix", prefix,
                                 "--store-ca", str(certs.ca), "--store-cert", str(certs.cert),
                                 "--store-key", str(certs.key), "--allow-unauthenticated-registration")
    b = _in_process(e.url, prefix, store_ca=str(certs.ca), store_cert=str(certs.cert), store_key=str(certs.key))
    try:
        _register(a.address, "n1", "127.0.0.1:1")
        wait_for("n1 (registered through the CLI replica) on the other replica",
                 lambda: listed(b) == {"n1": "127.0.0.1:1"})  # type: ignore[arg-type]
        _register(b.address, "n2", "127.0.0.1:2")
        wait_for("n2 on the CLI replica", lambda: listed(a) == {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"})
    finally:
        b.stop(grace=0)
        a.kill()


@pytest.mark.parametrize("case", ["no client certificate", "another CA", "plain HTTP"])
def test_etcd_refuses_a_replica_without_the_right_tls(tls_etcd: tuple[Etcd, Certs], case: str) -> None:
    e, certs = tls_etcd
    tls = {"no client certificate": {"store_ca": str(certs.ca)},
           "another CA": {"store_ca": str(certs.dir / "rogue-ca.crt"), "store_cert": str(certs.rogue_cert),
                          "store_key": str(certs.rogue_key)},
           "plain HTTP": {}}[case]
    d = _in_process(e.url, f"/tls-{uuid.uuid4().hex}/", **tls)
    try:
        with pytest.raises(grpc.RpcError) as err:
            _register(d.address, "x", "127.0.0.1:3")  # type: ignore[attr-defined]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
        assert "etcd store unreachable" in (err.value.details() or "")
    finally:
        d.stop(grace=0)


def test_store_tls_flags_that_cannot_work_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    for flags, message in (
        (["--store", "etcd://127.0.0.1:2379", "--store-cert", str(pem)], "go together"),
        (["--store-ca", str(pem)], "for --store etcd://"),
        (["--store", "etcd://127.0.0.1:2379", "--store-ca", str(tmp_path / "missing.pem")], "not a readable file"),
    ):
        args = build_parser().parse_args(["aggregator", *flags])
        with pytest.raises(ValueError, match=message):
            build_config(args)
