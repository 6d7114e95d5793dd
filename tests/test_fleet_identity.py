"""Fleet membership is authenticated and bound to identity (issue 8 item 7).

The reproducer: without TLS anyone could `RegisterNode {"name": "gpu-1", "address": <their own
NodeService>}` and forge gpu-1's verdicts, register a twin of a nodes-file node, or DeregisterNode a
real one; with mTLS any certificate from the CA could claim any name. Here: real aggregators (in-process
and `nodecompat aggregator` processes), real `nodecompat serve --register` daemons, and real mTLS
certificates minted with the openssl CLI (tests/support_fleet.make_certs / make_node_cert).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support_daemon import free_port
from support_fleet import (
    aggregator,
    make_certs,
    make_node_cert,
    start_aggregator_process,
    start_node,
    wait_until,
    write_nodes_file,
)

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.server import tls
from nodecompat.server.inventory.registration_auth import (
    LEASE_KEY_METADATA,
    TOKEN_METADATA,
    RegistrationPolicy,
    read_token_file,
)
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

TOKEN = "f" * 8 + "0123456789abcdef0123456789abcdef"


def _register(stub: fleet_pb2_grpc.FleetServiceStub, name: str, address: str,
              metadata: list[tuple[str, str]] | None = None) -> fleet_pb2.RegisterNodeResponse:
    return stub.RegisterNode(fleet_pb2.RegisterNodeRequest(name=name, address=address), timeout=5,
                             metadata=metadata or [])


def _deregister(
    stub: fleet_pb2_grpc.FleetServiceStub, name: str, metadata: list[tuple[str, str]] | None = None
) -> None:
    stub.DeregisterNode(fleet_pb2.DeregisterNodeRequest(name=name), timeout=5, metadata=metadata or [])


def _refused(call, *args, **kw) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kw)
    return err.value


def _names(stub: fleet_pb2_grpc.FleetServiceStub) -> dict[str, str]:
    resp = stub.ListNodes(fleet_pb2.ListNodesRequest(), timeout=5)
    return {n.name: n.address for n in resp.nodes}


@pytest.fixture
def nodes_file(tmp_path: Path) -> Path:
    return write_nodes_file(tmp_path / "nodes.json", [], extra=[{"name": "gpu-1", "address": "127.0.0.1:7001"}])


def test_without_auth_configured_registration_is_disabled(nodes_file: Path) -> None:
    """The reproducer, plaintext: forging gpu-1, a twin, deregistering a real node."""
    with aggregator(nodes_file=str(nodes_file)) as agg, grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        err = _refused(_register, stub, "gpu-1", f"127.0.0.1:{free_port()}")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "registration is disabled" in (err.details() or "")
        assert "--registration-token-file" in (err.details() or "") and "--tls-ca" in (err.details() or "")
        err = _refused(_register, stub, "gpu-2", f"127.0.0.1:{free_port()}")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = _refused(_deregister, stub, "gpu-1")
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _names(stub) == {"gpu-1": "127.0.0.1:7001"}


def test_shared_token_and_only_the_registrant_renews_or_deregisters(tmp_path: Path, nodes_file: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    policy = RegistrationPolicy(token=read_token_file(token_file))
    mine = [(TOKEN_METADATA, TOKEN), (LEASE_KEY_METADATA, "a" * 64)]
    theirs = [(TOKEN_METADATA, TOKEN), (LEASE_KEY_METADATA, "b" * 64)]
    edge = f"127.0.0.1:{free_port()}"
    with aggregator(nodes_file=str(nodes_file), registration=policy) as agg, \
            grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        no_token = _refused(_register, stub, "edge", edge, [(LEASE_KEY_METADATA, "a" * 64)])
        assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED and TOKEN_METADATA in (no_token.details() or "")
        wrong = _refused(_register, stub, "edge", edge, [(TOKEN_METADATA, TOKEN[:-1] + "0"), mine[1]])
        assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED and "does not match" in (wrong.details() or "")
        no_key = _refused(_register, stub, "edge", edge, [mine[0]])
        assert no_key.code() == grpc.StatusCode.PERMISSION_DENIED and LEASE_KEY_METADATA in (no_key.details() or "")
        assert _register(stub, "edge", edge, mine).ttl_seconds > 0
        assert _register(stub, "edge", edge, mine).ttl_seconds > 0  # renewal by the registrant
        hijack = _refused(_register, stub, "edge", f"127.0.0.1:{free_port()}", theirs)
        assert hijack.code() == grpc.StatusCode.PERMISSION_DENIED and "another registrant" in (hijack.details() or "")
        evict = _refused(_deregister, stub, "edge", theirs)
        assert evict.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _names(stub)["edge"] == edge
        # Never shadow the nodes file: not its name, not its address.
        twin = _refused(_register, stub, "gpu-1", f"127.0.0.1:{free_port()}", theirs)
        assert twin.code() == grpc.StatusCode.ALREADY_EXISTS and "nodes file" in (twin.details() or "")
        squat = _refused(_register, stub, "imposter", "127.0.0.1:7001", theirs)
        assert squat.code() == grpc.StatusCode.ALREADY_EXISTS and "'gpu-1'" in (squat.details() or "")
        _deregister(stub, "edge", mine)
        assert _names(stub) == {"gpu-1": "127.0.0.1:7001"}


def test_a_registration_never_shadows_a_dns_node() -> None:
    port = free_port()
    with aggregator(dns=[("localhost", port)], registration=RegistrationPolicy(allow_unauthenticated=True)) as agg, \
            grpc.insecure_channel(agg.address) as ch:  # type: ignore[attr-defined]
        stub = fleet_pb2_grpc.FleetServiceStub(ch)
        err = _refused(_register, stub, "edge", f"127.0.0.1:{port}")
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "comes from DNS (localhost:" in (err.details() or "")
        err = _refused(_register, stub, f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")  # a DNS node's name
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_daemon_registers_with_the_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    agg = start_aggregator_process(tmp_path, "--registration-token-file", str(token_file), "--lease-ttl", "3")
    node = start_node(tmp_path, "edge-t", "plain-vm",
                      args=["--register", agg.address, "--registration-token-file", str(token_file)])
    bad_file = tmp_path / "other-token"
    bad_file.write_text(TOKEN.replace("f", "e"))
    intruder = start_node(tmp_path, "intruder", "plain-vm",
                          args=["--register", agg.address, "--registration-token-file", str(bad_file)])
    try:
        with FleetClient(agg.address) as client:
            names: list[str] = []
            for _ in range(100):
                names = [n.name for n in client.list_nodes()]
                if names == ["edge-t"]:
                    break
                time.sleep(0.1)
            assert names == ["edge-t"]
        wait_until(lambda: "UNAUTHENTICATED" in intruder.log.read_text(), 30,
                   "the intruder's registration refused with UNAUTHENTICATED in its log")
    finally:
        node.kill()
        intruder.kill()
        agg.terminate()


# -- mTLS ----------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[object, Path]]:
    certs = make_certs(tmp_path / "pki")
    identities = tmp_path / "identities.yaml"
    identities.write_text("edge-7:\n- uri:spiffe://fleet.example/node/edge-7\n")
    yield certs, identities


def _mtls_stub(
    agg_address: str, ca: Path, cert: Path, key: Path
) -> tuple[grpc.Channel, fleet_pb2_grpc.FleetServiceStub]:
    ch = tls.open_channel(agg_address, tls.channel_credentials(str(ca), str(cert), str(key)))
    return ch, fleet_pb2_grpc.FleetServiceStub(ch)


def test_mtls_certificate_must_name_the_node(tmp_path: Path, pki: tuple[object, Path]) -> None:
    certs, identities = pki
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]  # type: ignore[attr-defined]
    nodes = write_nodes_file(tmp_path / "nodes.json", [], extra=[{"name": "gpu-1", "address": "127.0.0.1:7001"}])
    good = tls.channel_credentials(str(certs.ca), str(certs.cert), str(certs.key))  # type: ignore[attr-defined]
    agg = start_aggregator_process(tmp_path, *flags, "--nodes-file", str(nodes),
                                   "--registration-identities", str(identities), credentials=good)
    vm_cert, vm_key = make_node_cert(certs, "vm-9")  # type: ignore[arg-type]
    spiffe_cert, spiffe_key = make_node_cert(certs, "edge-7", dns=["edge-seven.internal"],  # type: ignore[arg-type]
                                             uris=["spiffe://fleet.example/node/edge-7"])
    channels = []
    try:
        ch, vm = _mtls_stub(agg.address, certs.ca, vm_cert, vm_key)  # type: ignore[attr-defined]
        channels.append(ch)
        assert _register(vm, "vm-9", f"127.0.0.1:{free_port()}").ttl_seconds > 0  # SAN DNS vm-9
        err = _refused(_register, vm, "gpu-2", f"127.0.0.1:{free_port()}")  # any other name: no
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "does not name node 'gpu-2'" in (err.details() or "") and "dns:vm-9" in (err.details() or "")
        ch, generic = _mtls_stub(agg.address, certs.ca, certs.cert, certs.key)  # type: ignore[attr-defined]
        channels.append(ch)  # SAN DNS localhost: may not claim or evict vm-9
        assert _refused(_register, generic, "vm-9", f"127.0.0.1:{free_port()}").code() == \
            grpc.StatusCode.PERMISSION_DENIED
        assert _refused(_deregister, generic, "vm-9").code() == grpc.StatusCode.PERMISSION_DENIED
        assert _refused(_deregister, generic, "gpu-1").code() == grpc.StatusCode.PERMISSION_DENIED
        ch, spiffe = _mtls_stub(agg.address, certs.ca, spiffe_cert, spiffe_key)  # type: ignore[attr-defined]
        channels.append(ch)  # the mapping file grants its URI SAN the name edge-7
        assert _register(spiffe, "edge-7", f"127.0.0.1:{free_port()}").ttl_seconds > 0
        assert _register(spiffe, "edge-seven.internal", f"127.0.0.1:{free_port()}").ttl_seconds > 0
        err = _refused(_register, spiffe, "gpu-1", f"127.0.0.1:{free_port()}")  # certificate names it? no
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert set(_names(vm)) == {"gpu-1", "vm-9", "edge-7", "edge-seven.internal"}
        _deregister(vm, "vm-9")
        assert "vm-9" not in _names(vm)
    finally:
        for ch in channels:
            ch.close()
        agg.terminate()


def test_flag_errors_name_the_flag(tmp_path: Path) -> None:
    from nodecompat.clients.cli import build_parser
    from nodecompat.clients.cmd_aggregator import build_config

    short = tmp_path / "short"
    short.write_text("abc")
    for argv, needle in (
        (["aggregator", "--registration-token-file", str(short)], "at least 16 bytes"),
        (["aggregator", "--registration-token-file", str(tmp_path / "none")], "cannot read"),
        (["aggregator", "--registration-identities", str(short)], "needs --tls-ca"),
    ):
        with pytest.raises(ValueError, match=needle):
            build_config(build_parser().parse_args(argv))
