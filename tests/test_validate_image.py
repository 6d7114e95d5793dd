"""ValidateImage by image reference through a real daemon and a real registry, and `validate --image`.

The daemon runs on the plain-vm fixture host (kernel 6.18), the registry is Debian's docker-registry
(tests/support_registry.py), images are pushed by skopeo and specs attached by our own attach.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import support_registry as sr
from support_daemon import free_port, start_daemon

from nodecompat.oci.attach import attach_spec
from nodecompat.v1 import node_pb2, node_pb2_grpc

registry = sr.registry
auth_registry = sr.auth_registry
repo_name = sr.repo_name

REPO = Path(__file__).resolve().parents[1]
PLAIN_VM = str(REPO / "tests" / "fixtures" / "hosts" / "plain-vm")

pytestmark = [pytest.mark.registry, sr.needs_registry]

ALLOW_LOOPBACK = ("--allowed-registries", "http://127.0.0.1:*")  # test registries: loopback, any port, HTTP too
NEEDS_KERNEL_7 = sr.spec_yaml(note="kernel>7").replace('Gt, value: ["2"]', 'Gt, value: ["7"]')


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon for the module: no test changes its configuration, and each test uses its own repository
    (repo_name) and its own proxies, so what one test caches is never what another asks for."""
    tmp = tmp_path_factory.mktemp("validate-image-daemon")
    d = start_daemon(tmp, "--host-root", PLAIN_VM, *ALLOW_LOOPBACK, name="vm-1", env=sr.env_without_docker(tmp))
    yield d
    d.terminate()


def _validate(address: str, timeout: float = 30, **kw: object) -> node_pb2.ValidateImageResponse:
    with grpc.insecure_channel(address) as ch:
        return node_pb2_grpc.NodeServiceStub(ch).ValidateImage(node_pb2.ValidateImageRequest(**kw), timeout=timeout)


def _code(address: str, timeout: float = 30, **kw: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        _validate(address, timeout=timeout, **kw)
    return err.value.code(), err.value.details() or ""


def test_by_tag_and_by_digest_with_digests_in_the_report(registry, repo_name, tmp_path, daemon) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    art = attach_spec(img.reference, sr.spec_yaml(note="ok"), plain_http=True)
    resp = _validate(daemon.address, image=img.reference, plain_http=True)
    assert resp.compatible and resp.report.node_name == "vm-1"
    assert resp.report.image_digest == img.digest
    assert resp.report.artifact_digest == art.artifact_digest
    assert resp.report.sets[0].rules[0].matched
    by_digest = _validate(daemon.address, image=img.by_digest(), plain_http=True)
    assert by_digest.compatible and by_digest.report.artifact_digest == art.artifact_digest

    # Two artifacts on one image: the newest wins (kernel 6 is not > 7). A fresh image, because the
    # daemon caches what a reference resolved to for a while (tag_ttl).
    img2 = sr.push_image(registry.host, repo_name, tmp_path, tag="v2")
    attach_spec(img2.reference, NEEDS_KERNEL_7, plain_http=True, created="2099-01-01T00:00:00Z")
    attach_spec(img2.reference, sr.spec_yaml(note="older"), plain_http=True, created="2020-01-01T00:00:00Z")
    newer = _validate(daemon.address, image=img2.reference, plain_http=True)
    assert not newer.compatible
    detail = newer.report.sets[0].rules[0].match_features[0].expressions[0]
    assert list(detail.actual) == ["6"]


def test_repeated_calls_are_served_from_the_daemon_cache(registry, repo_name, tmp_path, daemon) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    with sr.RegistryProxy(registry.host, referrers=True) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        attach_spec(ref, sr.spec_yaml(note="cached"), plain_http=True)
        first = _validate(daemon.address, image=ref, plain_http=True)
        calls_after_first = proxy.referrers_calls
        for _ in range(5):
            assert _validate(daemon.address, image=ref, plain_http=True).compatible
        assert first.compatible and calls_after_first >= 1
        assert proxy.referrers_calls == calls_after_first, "cached calls went back to the registry"


def test_missing_image_and_missing_artifact_are_not_found(registry, repo_name, tmp_path, daemon) -> None:
    missing = f"{registry.host}/{repo_name}:nope"
    code, msg = _code(daemon.address, image=missing, plain_http=True)
    assert code == grpc.StatusCode.NOT_FOUND and missing in msg
    img = sr.push_image(registry.host, repo_name, tmp_path)
    code, msg = _code(daemon.address, image=img.reference, plain_http=True)
    assert code == grpc.StatusCode.NOT_FOUND and img.reference in msg


def test_unreachable_registry_is_unavailable(daemon) -> None:
    code, msg = _code(daemon.address, image=f"127.0.0.1:{free_port()}/x/y:v1", plain_http=True)
    assert code == grpc.StatusCode.UNAVAILABLE, msg


def test_slow_registry_gives_deadline_exceeded_within_the_callers_deadline(
    registry, repo_name, tmp_path, daemon
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(), plain_http=True)
    with sr.RegistryProxy(registry.host, delay=5.0) as slow:
        code, msg = _code(daemon.address, timeout=1.5, image=img.reference.replace(registry.host, slow.host),
                          plain_http=True)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The daemon's own answer (it keeps a margin), not the client library giving up ("Deadline Exceeded").
    assert "budget" in msg and slow.host in msg, msg
    # The daemon is still fine afterwards.
    assert _validate(daemon.address, spec=sr.spec_yaml()).compatible


def test_refused_credentials_are_unauthenticated(auth_registry, repo_name, tmp_path) -> None:
    assert auth_registry.tls is not None  # credentials are only ever sent over HTTPS
    d = start_daemon(tmp_path, "--host-root", PLAIN_VM, *ALLOW_LOOPBACK, "--ca-file", str(auth_registry.tls[0]),
                     env=sr.env_without_docker(tmp_path))
    try:
        code, msg = _code(d.address, image=f"{auth_registry.host}/{repo_name}:v1")
    finally:
        d.terminate()
    assert code == grpc.StatusCode.UNAUTHENTICATED and "needs credentials" in msg, msg


def test_oversized_and_malformed_artifacts_are_invalid_argument(registry, repo_name, tmp_path, daemon) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    sr.push_raw_artifact(registry.host, repo_name, sr.subject_of(img), layers=[b"x" * (2 << 20)],
                         annotations={"org.opencontainers.image.created": "2030-01-01T00:00:00Z"})
    code, msg = _code(daemon.address, image=img.reference, plain_http=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "byte" in msg.lower()

    img2 = sr.push_image(registry.host, repo_name, tmp_path, tag="v2")
    sr.push_raw_artifact(registry.host, repo_name, sr.subject_of(img2),
                         layers=[b"compatibilities:\n- rules:\n  - matchFeatures:\n    - feature: pci.device\n"
                                 b"      matchExpressions: {vendor: {op: Bogus}}\n"])
    code, msg = _code(daemon.address, image=img2.reference, plain_http=True)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "artifact sha256:" in msg and "matchExpressions.vendor" in msg


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", *args], capture_output=True,
                          text=True, timeout=90, env=sr.env_without_docker(tmp_path))


def test_cli_validate_image_locally_and_through_the_daemon(registry, repo_name, tmp_path, daemon) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    art = attach_spec(img.reference, sr.spec_yaml(note="cli"), plain_http=True)
    local = _cli(tmp_path, "validate", "--image", img.reference, "--plain-http", "--host-root", PLAIN_VM,
                 "-o", "json")
    assert local.returncode == 0, local.stderr
    body = json.loads(local.stdout)
    assert body["compatible"] and body["image_digest"] == img.digest
    assert body["artifact_digest"] == art.artifact_digest

    remote = _cli(tmp_path, "validate", "--image", img.reference, "--plain-http", "--node", daemon.address)
    assert remote.returncode == 0, remote.stderr
    assert art.artifact_digest in remote.stdout and "node: vm-1" in remote.stdout

    nfd = _cli(tmp_path, "validate", "--image", img.reference, "--plain-http", "--node", daemon.address,
               "-o", "nfd-json")
    assert nfd.returncode == 0
    assert json.loads(nfd.stdout)[0]["rules"][0]["isMatch"] is True and not nfd.stdout.endswith("\n")

    missing = _cli(tmp_path, "validate", "--image", f"{registry.host}/{repo_name}:gone", "--plain-http",
                   "--host-root", PLAIN_VM)
    assert missing.returncode == 2 and "NOT_FOUND" in missing.stderr and missing.stdout == ""


def test_trace_of_validate_by_reference_has_fetch_and_registry_spans(registry, repo_name, tmp_path) -> None:
    from support_otlp import OtlpReceiver

    receiver = OtlpReceiver()
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="traced"), plain_http=True)
    env = {**sr.env_without_docker(tmp_path), **receiver.env("traced-node")}
    d = start_daemon(tmp_path, "--host-root", PLAIN_VM, *ALLOW_LOOPBACK, env=env)
    try:
        assert _validate(d.address, image=img.reference, plain_http=True).compatible
        # The server span ends after the handler's own ("evaluate spec") and, on a loaded machine, may come in a
        # later export batch (OTEL_BSP_SCHEDULE_DELAY 100 ms): wait for both.
        spans = receiver.wait_for(lambda ss: {"evaluate spec", "/nodecompat.v1.NodeService/ValidateImage"}
                                  <= {s.name for s in ss})
    finally:
        d.terminate()
        receiver.stop()
    server = next(s for s in spans if s.name == "/nodecompat.v1.NodeService/ValidateImage")
    fetch = next(s for s in spans if s.name == "fetch compatibility artifact")
    assert fetch.parent_span_id == server.span_id
    registry_spans = [s for s in spans if s.name.startswith("registry ") and s.parent_span_id == fetch.span_id]
    assert len(registry_spans) >= 3  # resolve, referrers, manifest, blob
    assert all(s.trace_id == server.trace_id for s in registry_spans)
    evaluate_span = next(s for s in spans if s.name == "evaluate spec")
    assert evaluate_span.parent_span_id == server.span_id and evaluate_span.attributes["nodecompat.compatible"]


def test_cli_registry_unavailable_through_the_daemon_has_no_tls_hint(daemon, tmp_path) -> None:
    """UNAVAILABLE answered by the daemon (its registry is down) is not a TLS problem with the daemon."""
    done = _cli(tmp_path, "validate", "--image", f"127.0.0.1:{free_port()}/x/y:v1", "--plain-http",
                "--node", daemon.address)
    assert done.returncode == 2 and "UNAVAILABLE" in done.stderr and "registry" in done.stderr
    assert "--tls-ca" not in done.stderr
