"""Host names that are not UTF-8 (Linux allows any byte but / and NUL in a file name, and an interface name is
any bytes but /, : and whitespace): Python reads them with surrogate escapes (os.fsdecode), which a protobuf string
cannot carry. A probe's note naming such a file (features.d: local's "ignored, N bytes > 64 KiB") or a feature
value from such a listing (/sys/class/net/<name>: network.device's name) must not fail the whole answer: before,
GetFeatures and ValidateImage answered UNKNOWN ("UnicodeEncodeError ... surrogates not allowed") and
WatchFeatures failed for every caller, so the aggregator lost the node. The bytes are shown escaped (eth\\xff),
as Python's backslashreplace.

A real daemon process over a host root (tests/support_daemon.py) and real gRPC calls (review9)."""

from __future__ import annotations

import os
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
