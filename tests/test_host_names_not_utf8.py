"""Host names that are not UTF-8 (Linux allows any byte but / and NUL in a file name, and an interface name is
any bytes but /, : and whitespace): Python reads them with surrogate escapes (os.fsdecode), which a protobuf string
cannot carry. A probe's note naming such a file (features.d: local's "ignored, N bytes > 64 KiB") or a feature
value from such a listing (/sys/class/net/<name>: network.device's name) must not fail the whole answer: before,
GetFeatures and ValidateImage answered UNKNOWN ("UnicodeEncodeError ... surrogates not allowed") and
WatchFeatures failed for every caller, so the aggregator lost the node. The bytes are shown escaped (eth\\xff),
as Python's backslashreplace.

A real daemon process over a host root (tests/support_daemon.py) and real gRPC calls (review9). The CLI's local
outputs spell these names as the daemon's answers do (one spelling: nodecompat/utf8.py): `nodecompat features`
-o json wrote the surrogate escape (eth\\udcff, a lone surrogate Go's JSON decoder reads as U+FFFD) and its table
and `validate`'s verdict wrote the raw byte (not UTF-8 at all); the real CLI is run as a user runs it and its
output compared with its --node output from the real daemon over the same host tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
from support_daemon import start_daemon

from nodecompat import wire
from nodecompat.fleet.fingerprint import fingerprint
from nodecompat.hostroot import DEFAULT_FEATURES_D
from nodecompat.probes.local import MAX_FILE_SIZE
from nodecompat.v1 import features_pb2, inventory_pb2, node_pb2, node_pb2_grpc


def _host(root: Path) -> None:
    fd = os.fsencode(root) + DEFAULT_FEATURES_D.encode()
    os.makedirs(fd)
    with open(fd + b"/big\xff", "wb") as f:
        f.write(b"x" * (MAX_FILE_SIZE + 1))  # ignored, said in local's notes with its name
    with open(fd + b"/ok", "wb") as f:
        f.write(b"k=v\n")
    net = os.fsencode(root) + b"/sys/class/net/eth\xff"
    os.makedirs(net + b"/device")
    for name, value in ((b"operstate", b"up\n"), (b"mtu", b"1500\n"), (b"speed", b"1000\n")):
        with open(net + b"/" + name, "wb") as f:
            f.write(value)


def test_names_that_are_not_utf8_are_answered_escaped(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _host(root)
    d = start_daemon(tmp_path, "--host-root", str(root), "--probes", "local,nic")
    try:
        with grpc.insecure_channel(d.address) as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            got = stub.GetFeatures(features_pb2.GetFeaturesRequest(), timeout=30)
            local = next(s for s in got.probes if s.name == "local")
            assert local.ok and any(n.startswith(f"{DEFAULT_FEATURES_D}/big\\xff: ignored") for n in local.notes), local
            assert dict(got.features.attributes["local.feature"].elements) == {"k": "v"}
            names = [x.attributes["name"] for x in got.features.instances["network.device"].elements]
            assert names == ["eth\\xff"], names
            spec = ("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: nic\n    matchFeatures:\n"
                    "    - feature: network.device\n      matchExpressions:\n        name: {op: In, value: [eth0]}\n")
            for nfd in (False, True):  # the verdict names the element it saw (our report, and NFD's JSON)
                verdict = stub.ValidateImage(node_pb2.ValidateImageRequest(spec=spec, nfd_compat=nfd, nfd_json=nfd),
                                             timeout=30)
                assert not verdict.compatible
                seen = verdict.report.sets[0].rules[0].match_features[0].expressions[0]
                assert seen.detail == "wanted In [eth0], node has eth\\xff", verdict
            first = next(iter(stub.WatchFeatures(inventory_pb2.WatchFeaturesRequest(once=True), timeout=30)))
            assert first.WhichOneof("item") == "features", first
            change = first.features
            assert [x.attributes["name"] for x in change.features.instances["network.device"].elements] == names
            # the node's fingerprint is the one a receiver computes from what it was sent (escaped alike)
            assert fingerprint(wire.features_from_proto(change.features)) == change.fingerprint
            assert any("big\\xff" in n for s in change.probes if s.name == "local" for n in s.notes), change.probes
    finally:
        d.terminate()


def _cli(*args: str) -> tuple[int, str]:
    """`nodecompat ARGS...` as a user runs it: (exit code, stdout), stdout checked to be UTF-8."""
    done = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", *args], capture_output=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")[-3000:]
    return done.returncode, done.stdout.decode("utf-8")  # UnicodeDecodeError: a raw non-UTF-8 byte was printed


NIC_SPEC = ("version: v1alpha1\ncompatibilities:\n- rules:\n  - name: nic\n    matchFeatures:\n"
            "    - feature: network.device\n      matchExpressions:\n        name: {op: In, value: [eth0]}\n")


def test_the_cli_spells_names_that_are_not_utf8_as_the_daemon_does(tmp_path: Path) -> None:
    root = tmp_path / "host"
    _host(root)
    spec = tmp_path / "spec.yaml"
    spec.write_text(NIC_SPEC)
    d = start_daemon(tmp_path, "--host-root", str(root), "--probes", "local,nic")
    try:
        docs = {}
        for where in (("--host-root", str(root)), ("--node", d.address)):
            _code, out = _cli("features", *where, "-o", "json")
            doc = json.loads(out)
            docs[where[0]] = ([x["attributes"]["name"] for x in doc["instances"]["network.device"]["elements"]],
                              next(p["notes"] for p in doc["probes"] if p["name"] == "local"))
        local, daemon = docs["--host-root"], docs["--node"]
        assert local == daemon, (local, daemon)
        assert local[0] == ["eth\\xff"] and local[1][0].startswith(f"{DEFAULT_FEATURES_D}/big\\xff: ignored"), local
        # a snapshot written locally reads back with the same spelling (validate --features)
        snapshot = tmp_path / "snapshot.json"
        snapshot.write_text(_cli("features", "--host-root", str(root), "-o", "json")[1])
        for where in (("--host-root", str(root)), ("--node", d.address)):
            _code, table = _cli("features", *where, "--prefix", "network.device", "--prefix", "local")
            assert "name=eth\\xff " in table and f"note: {DEFAULT_FEATURES_D}/big\\xff: ignored" in table, table
        detail = "wanted In [eth0], node has eth\\xff"
        verdicts = {}
        for where in (("--host-root", str(root)), ("--node", d.address), ("--features", str(snapshot))):
            for nfd in ((), ("--nfd-compat",)):
                code, out = _cli("validate", "--spec", str(spec), *where, *nfd, "-o", "json")
                assert code == 1, out
                seen = json.loads(out)["sets"][0]["rules"][0]["match_features"][0]["expressions"][0]
                verdicts[(where[0], nfd)] = (seen["detail"], tuple(seen["actual"]), seen["instance"])
                _code, table = _cli("validate", "--spec", str(spec), *where, *nfd)
                assert f"network.device.name: {detail} on network.device[0] name=eth\\xff" in table, table
        assert set(verdicts.values()) == {(detail, ("eth\\xff",), "network.device[0] name=eth\\xff")}, verdicts
    finally:
        d.terminate()
