"""The fleet with mutual TLS everywhere: daemons and aggregator require client certificates from the
test CA (made with the openssl CLI), the aggregator presents its own to the daemons, a daemon registers
over mTLS, and clients without a valid certificate are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support_fleet import (
    SPEC_NVIDIA,
    aggregator,
    make_certs,
    make_node_cert,
    start_aggregator_process,
    start_node,
    write_nodes_file,
)

from nodecompat.clients.fleet_client import FleetCallError, FleetClient
from nodecompat.clients.node_client import NodeCallError, NodeClient
from nodecompat.server import tls

CLI = [sys.executable, "-m", "nodecompat.clients.cli"]


@pytest.mark.parametrize("transport", ["grpc", "h2"])  # the aggregator's --fanout-transport
def test_fleet_over_mutual_tls_and_refusal_without_a_valid_certificate(tmp_path: Path, transport: str) -> None:
    certs = make_certs(tmp_path / "pki")
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    nodes_path = tmp_path / "nodes.json"
    procs = [
        start_node(tmp_path, name, host, args=flags, credentials=good, wait=False)
        for name, host in (("h100", "h100-server"), ("mi300", "amd-mi300"))
    ]
    write_nodes_file(nodes_path, procs)
    agg = start_aggregator_process(
        tmp_path, "--nodes-file", str(nodes_path), "--lease-ttl", "5", "--fanout-transport", transport, *flags,
        credentials=good,
    )
    # A registering node's certificate names it (SAN DNS "vm"): docs/security.md, "Fleet membership".
    vm_cert, vm_key = make_node_cert(certs, "vm")
    vm_flags = ["--tls-cert", str(vm_cert), "--tls-key", str(vm_key), "--tls-ca", str(certs.ca)]
    procs.append(
        start_node(tmp_path, "vm", "plain-vm", args=[*vm_flags, "--register", agg.address], credentials=good,
                   wait=False)
    )
    try:
        for p in procs:
            p.wait_serving()
        with FleetClient(agg.address, credentials=good) as client:
            listed: list[str] = []
            for _ in range(100):  # the registered node appears after its first heartbeat
                listed = sorted(n.name for n in client.list_nodes())
                if listed == ["h100", "mi300", "vm"]:
                    break
                time.sleep(0.1)
            assert listed == ["h100", "mi300", "vm"]
        run = subprocess.run(
            [
                *CLI,
                "fleet",
                "validate",
                "--aggregator",
                agg.address,
                "--spec",
                "-",
                "-o",
                "json",
                "--timeout",
                "20",
                "--tls-ca",
                str(certs.ca),
                "--tls-cert",
                str(certs.cert),
                "--tls-key",
                str(certs.key),
            ],
            input=SPEC_NVIDIA,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        doc = json.loads(run.stdout)
        assert {n["name"]: (n["status"], n["compatible"]) for n in doc["nodes"]} == {
            "h100": ("OK", True),
            "mi300": ("OK", False),
            "vm": ("OK", False),
        }

        refused = {
            "no client certificate": tls.channel_credentials(certs.ca),
            "certificate from another CA": tls.channel_credentials(certs.ca, certs.rogue_cert, certs.rogue_key),
        }
        for what, creds in refused.items():
            with FleetClient(agg.address, credentials=creds) as client, pytest.raises(FleetCallError) as err:
                client.validate(spec_text=SPEC_NVIDIA, timeout=5)
            assert err.value.code == "UNAVAILABLE", what
            with (
                NodeClient(procs[0].address, credentials=creds, timeout=5) as node,
                pytest.raises(NodeCallError),
            ):
                node.validate_spec(SPEC_NVIDIA)
        plain = subprocess.run(
            [*CLI, "fleet", "nodes", "--aggregator", agg.address], capture_output=True, text=True, timeout=60
        )
        assert plain.returncode == 2 and "UNAVAILABLE" in plain.stderr

        # An aggregator that cannot present a client certificate is refused by every daemon.
        with (
            aggregator(nodes_file=str(nodes_path), node_credentials=tls.channel_credentials(certs.ca),
                       fanout_transport=transport, node_tls=tls.ClientTls(str(certs.ca), None, None)) as anon,
            FleetClient(anon.address) as client,
        ):
            answer = client.validate(spec_text=SPEC_NVIDIA, timeout=10)
        assert {n.name: n.status for n in answer.nodes} == {"h100": "UNAVAILABLE", "mi300": "UNAVAILABLE"}
    finally:
        for p in procs:
            p.terminate()
        agg.terminate()


def test_tls_configuration_errors_name_the_flag(tmp_path: Path) -> None:
    not_pem = tmp_path / "x.crt"
    not_pem.write_text("hello")
    with pytest.raises(tls.TlsConfigError, match=r"--tls-cert .*x.crt: not a PEM"):
        tls.server_credentials(not_pem, not_pem)
    with pytest.raises(tls.TlsConfigError, match=r"--tls-key .*nope.key: cannot read"):
        tls.channel_credentials(None, not_pem, tmp_path / "nope.key")
    with pytest.raises(tls.TlsConfigError, match="both --tls-cert and --tls-key"):
        tls.channel_credentials(None, not_pem, None)
    with pytest.raises(tls.TlsConfigError, match="both --tls-cert and --tls-key"):
        tls.server_credentials(not_pem, None)


def test_features_and_validate_reach_an_mtls_daemon_only_with_a_client_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]
    node = start_node(tmp_path, "h100", "h100-server", args=flags, credentials=good)
    spec = tmp_path / "nvidia.yaml"
    spec.write_text(SPEC_NVIDIA)
    features = [*CLI, "features", "--node", node.address, "-o", "json", "--prefix", "pci."]
    validate = [*CLI, "validate", "--node", node.address, "--spec", str(spec), "-o", "json"]
    runs = {
        "features mtls": [*features, *flags],
        "validate mtls": [*validate, *flags],
        "features ca only": [*features, "--tls-ca", str(certs.ca)],
        "validate ca only": [*validate, "--tls-ca", str(certs.ca)],
        "features plaintext": features,
        "validate plaintext": validate,
        "features local with tls flags": [*CLI, "features", "--tls-ca", str(certs.ca)],
        "validate missing key": [*validate, "--tls-ca", str(certs.ca), "--tls-cert", str(certs.cert)],
    }
    try:  # the CLI runs in parallel: each is mostly interpreter start-up
        procs = {
            what: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for what, cmd in runs.items()
        }
        out: dict[str, tuple[int, str, str]] = {}
        for what, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=60)
            out[what] = (proc.returncode, stdout, stderr)
    finally:
        node.terminate()
    code, stdout, stderr = out["features mtls"]
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["node_name"] == "h100" and "pci.device" in doc["instances"]
    code, stdout, stderr = out["validate mtls"]
    assert code == 0, stderr
    assert json.loads(stdout)["compatible"] is True
    for what in ("features ca only", "validate ca only"):
        code, stdout, stderr = out[what]
        assert (code, stdout) == (2, ""), what
        assert f"node {node.address}" in stderr and "UNAVAILABLE" in stderr, what
        assert "mutual TLS, give --tls-cert and --tls-key" in stderr, what
    for what in ("features plaintext", "validate plaintext"):
        code, stdout, stderr = out[what]
        assert (code, stdout) == (2, "") and "UNAVAILABLE" in stderr and "give --tls-ca" in stderr, what
    code, _, stderr = out["features local with tls flags"]
    assert code == 2 and "apply to --node only" in stderr
    code, _, stderr = out["validate missing key"]
    assert code == 2 and "both --tls-cert and --tls-key" in stderr
