"""ValidateImage with inline specs through a real daemon: verdicts, located errors, hostile input,
unknown facts. The daemon runs on fixture hosts so that verdicts are exact."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support_daemon import make_plugin, start_daemon

from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
HOSTS = REPO / "tests" / "fixtures" / "hosts"
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
EXAMPLE = (REPO / "examples" / "gpu-node.yaml").read_text()


@pytest.fixture(scope="module")
def h100(tmp_path_factory: pytest.TempPathFactory):
    d = start_daemon(tmp_path_factory.mktemp("h100"), "--host-root", str(HOSTS / "h100-server"), name="h100")
    yield d
    d.terminate()


def _stub(address: str) -> node_pb2_grpc.NodeServiceStub:
    return node_pb2_grpc.NodeServiceStub(grpc.insecure_channel(address))


def test_grpcurl_validates_an_inline_spec(h100) -> None:
    out = subprocess.run(
        [GRPCURL, "-plaintext", "-d", json.dumps({"spec": EXAMPLE, "tags": ["gpu"]}), h100.address,
         "nodecompat.v1.NodeService/ValidateImage"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["compatible"] is True and body["score"] == 100
    [gpu_set] = body["report"]["sets"]  # --tags gpu keeps only the GPU set
    assert gpu_set["passed"] and gpu_set["rules_matched"] == gpu_set["rules_total"] == 2


def test_verdict_says_what_the_node_has(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--host-root", str(HOSTS / "plain-vm"), name="vm")
    try:
        resp = _stub(d.address).ValidateImage(node_pb2.ValidateImageRequest(spec=EXAMPLE), timeout=30)
        asked = _stub(d.address).ValidateImage(node_pb2.ValidateImageRequest(spec=EXAMPLE, nfd_json=True), timeout=30)
    finally:
        d.terminate()
    gpu_set = resp.report.sets[0]
    assert not gpu_set.passed and gpu_set.description == "GPU training node"
    vendor = next(e for t in gpu_set.rules[0].match_features for e in t.expressions if e.element == "vendor")
    assert not vendor.matched and vendor.instance.startswith("pci.device[")
    assert vendor.actual and vendor.actual[0] in vendor.detail and "10de" in vendor.detail
    assert resp.report.nfd_json == ""  # NFD's JSON only when asked (nfd_json), otherwise the same answer
    assert asked.report.nfd_json.startswith("[{")
    asked.report.nfd_json = ""
    assert asked == resp


def test_malformed_spec_is_invalid_argument_with_every_problem_located(h100) -> None:
    bad = """
version: v1alpha1
compatibilities:
- rules:
  - name: r0
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In}
        class: {op: Gt, value: ["a", "b"]}
        device: {op: InRegexp, value: ["(unclosed"]}
"""
    with pytest.raises(grpc.RpcError) as err:
        _stub(h100.address).ValidateImage(node_pb2.ValidateImageRequest(spec=bad), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    msg = err.value.details() or ""
    base = "compatibilities[0].rules[0].matchFeatures[0].matchExpressions"
    for where in (f"{base}.vendor", f"{base}.class", f"{base}.device"):
        assert where in msg, msg


HOSTILE = {
    "10 MiB": "version: v1alpha1\n# " + "x" * (10 << 20),
    "10,000-deep": "[" * 10_000 + "]" * 10_000,
    "billion laughs": "a: &a [x,x,x,x,x,x,x,x,x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
              for i in range(9)),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_specs_are_refused_with_invalid_argument(h100, name: str) -> None:
    stub = _stub(h100.address)
    with pytest.raises(grpc.RpcError) as err:
        stub.ValidateImage(node_pb2.ValidateImageRequest(spec=HOSTILE[name]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    # and the daemon is fine afterwards
    assert stub.ValidateImage(node_pb2.ValidateImageRequest(spec=EXAMPLE), timeout=30).compatible


def test_other_calls_are_served_while_the_costliest_accepted_spec_is_evaluated(h100) -> None:
    """The most expensive spec the caps admit (256 regexes over every PCI device) takes a while; health
    checks and GetFeatures sent meanwhile complete *during* it, not after it."""
    from support_specs import at_the_caps_spec

    stub = _stub(h100.address)
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(h100.address))
    window: dict[str, float] = {}
    done: list[float] = []

    def heavy() -> None:
        window["start"] = time.monotonic()
        for _ in range(3):  # a few in a row, so the window is wide on a fast machine too
            stub.ValidateImage(node_pb2.ValidateImageRequest(spec=at_the_caps_spec("regex")), timeout=60)
        window["end"] = time.monotonic()

    t = threading.Thread(target=heavy)
    t.start()
    while t.is_alive():
        health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        stub.GetFeatures(features_pb2.GetFeaturesRequest(prefixes=["kernel.version"]), timeout=10)
        done.append(time.monotonic())
    t.join()
    inside = [x for x in done if window["start"] < x < window["end"]]
    print(f"{len(inside)} call pairs completed during {window['end'] - window['start']:.2f}s of heavy evaluation")
    assert len(inside) >= 2


def test_catastrophic_regex_is_evaluated_in_linear_time(tmp_path: Path) -> None:
    """`(a+)+$` against a 60 KB run of `a` that ends in `!`: exponential for a backtracking engine (the
    call would never answer within its deadline), linear for RE2. The long value is a local feature file
    on a copy of the plain-vm host."""
    import shutil

    root = tmp_path / "host"
    shutil.copytree(HOSTS / "plain-vm", root, symlinks=True)
    features_d = root / "etc" / "kubernetes" / "node-feature-discovery" / "features.d"
    features_d.mkdir(parents=True, exist_ok=True)
    (features_d / "long").write_text("long=" + "a" * 60_000 + "!\n")
    spec = """
compatibilities:
- rules:
  - matchFeatures:
    - feature: local.feature
      matchExpressions:
        long: {op: InRegexp, value: ["(a+)+$", "^(a|aa)+$"]}
"""
    d = start_daemon(tmp_path, "--host-root", str(root))
    try:
        resp = _stub(d.address).ValidateImage(node_pb2.ValidateImageRequest(spec=spec), timeout=20)
        feats = _stub(d.address).GetFeatures(features_pb2.GetFeaturesRequest(prefixes=["local."]), timeout=20)
    finally:
        d.terminate()
    assert len(feats.features.attributes["local.feature"].elements["long"]) == 60_001  # the value was there
    assert not resp.compatible
    expr = resp.report.sets[0].rules[0].match_features[0].expressions[0]
    assert expr.element == "long" and not expr.matched


FAILING_PLUGIN = """
from nodecompat.probes.base import FeatureInfo, Probe

class BrokenGpu(Probe):
    name = "brokengpu"
    features = (FeatureInfo("gpu.device", frozenset({"instance"})), FeatureInfo("gpu.driver", frozenset({"attribute"})))
    def discover(self, host):
        raise OSError("NVML: driver/library version mismatch")
"""


def test_facts_of_a_failed_probe_are_unknown_not_a_silent_mismatch(tmp_path: Path) -> None:
    site = make_plugin(tmp_path, "brokengpu", FAILING_PLUGIN, {"brokengpu": "brokengpu:BrokenGpu"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    # A third-party GPU probe that fails, run instead of the built-in one.
    probes = "pci,kernel,hugepages,cpu,memory,system,brokengpu"
    d = start_daemon(tmp_path, "--host-root", str(HOSTS / "h100-server"), "--probes", probes, env=env)
    try:
        resp = _stub(d.address).ValidateImage(node_pb2.ValidateImageRequest(spec=EXAMPLE, tags=["gpu"]),
                                              timeout=30)
        statuses = {s.name: s for s in _stub(d.address).GetFeatures(features_pb2.GetFeaturesRequest(),
                                                                     timeout=30).probes}
    finally:
        d.terminate()
    assert not statuses["brokengpu"].ok
    assert not resp.compatible
    assert resp.report.sets[0].unknown
    assert any("gpu.driver" in u and "mismatch" in u for u in resp.report.unknown_facts)
    term = next(t for t in resp.report.sets[0].rules[0].match_features if t.feature == "gpu.driver")
    assert term.unknown and not term.matched


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        ({"platform": "linux/amd64/v3/extra/x"}, "platform:"),
        ({"tags": [f"t{i}" for i in range(1000)]}, "at most 256 tags"),
    ],
)
def test_malformed_request_fields_are_invalid_argument(h100, request_fields: dict, words: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stub(h100.address).ValidateImage(node_pb2.ValidateImageRequest(spec=EXAMPLE, **request_fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in (err.value.details() or "")


def test_too_many_feature_prefixes_are_invalid_argument(h100) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _stub(h100.address).GetFeatures(features_pb2.GetFeaturesRequest(prefixes=[f"p{i}" for i in range(65)]),
                                        timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 64 prefixes" in (err.value.details() or "")
