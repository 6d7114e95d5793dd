"""deploy/kubernetes/webhook: valid manifests (kubernetes-validate, strict) that say what they claim, and a
mint-cert.sh whose certificate the API server would accept (verified here over TLS by the Service's name)."""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from support_webhook import WebhookProc

from nodecompat.clients.cli import build_parser

DIR = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes" / "webhook"
K8S = kubernetes_validate.latest_version()


def docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DIR / "webhook.yaml").read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    return next(d for d in docs() if d["kind"] == kind)


@pytest.mark.parametrize("doc", docs(), ids=lambda d: d["kind"])
def test_manifest_validates(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S, strict=True)


def test_deployment_is_non_root_read_only_and_its_flags_parse() -> None:
    dep = one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and c["securityContext"]["capabilities"][
        "drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"] == {"scheme": "HTTPS", "path": "/healthz", "port": "https"}
    args = build_parser().parse_args(c["args"])  # SystemExit on an unknown flag
    assert args.command == "webhook" and args.tls_cert.startswith("/etc/nodecompat/tls/")
    assert {v["name"]: v for v in pod["volumes"]}["tls"]["secret"]["secretName"] == "nodecompat-webhook-tls"


@pytest.mark.parametrize("kind", ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"])
def test_webhook_configurations_match_the_deployment(kind: str) -> None:
    dep, svc = one("Deployment"), one("Service")
    args = build_parser().parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    (hook,) = one(kind)["webhooks"]
    assert hook["sideEffects"] == "None" and hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == args.failure_policy.capitalize()  # Fail <-> --failure-policy=fail
    assert args.deadline < hook["timeoutSeconds"] <= 30
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"kube-system", dep["metadata"]["namespace"]}
    svc_ref = hook["clientConfig"]["service"]
    assert (svc_ref["name"], svc_ref["namespace"]) == (svc["metadata"]["name"], svc["metadata"]["namespace"])
    assert svc_ref["port"] == svc["spec"]["ports"][0]["port"]
    assert svc_ref["path"] == ("/mutate" if kind.startswith("Mutating") else "/validate")
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]


def test_kustomization_lists_the_manifest() -> None:
    assert yaml.safe_load((DIR / "kustomization.yaml").read_text())["resources"] == ["webhook.yaml"]


def _wait_listening(hook: WebhookProc, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert hook.proc.poll() is None, hook.log.read_text()
        try:
            socket.create_connection(("127.0.0.1", hook.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(hook.log.read_text())


def test_mint_cert_makes_a_certificate_the_api_server_accepts_and_injects_the_ca_bundle(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    r = subprocess.run(["sh", str(DIR / "mint-cert.sh"), str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "kubectl apply -f" in r.stdout and "kubectl patch" in r.stdout
    secret = yaml.safe_load((out / "secret.yaml").read_text())
    kubernetes_validate.validate(secret, K8S, strict=True)
    assert base64.b64decode(secret["data"]["tls.crt"]) == (out / "tls.crt").read_bytes()
    patch = json.loads((out / "ca-bundle.patch.json").read_text())
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        patched = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(one(kind)))
        kubernetes_validate.validate(patched, K8S, strict=True)
        assert base64.b64decode(patched["webhooks"][0]["clientConfig"]["caBundle"]) == (out / "ca.crt").read_bytes()
    # The webhook serving the minted pair, verified as the API server does: by the Service's DNS name.
    hook = WebhookProc(tmp_path, out / "ca.crt", out / "tls.crt", out / "tls.key", "127.0.0.1:1")
    try:
        _wait_listening(hook)
        ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
        for name, ok in (("nodecompat-webhook.nodecompat.svc", True), ("evil.nodecompat.svc", False)):
            with socket.create_connection(("127.0.0.1", hook.port), timeout=10) as sock:
                if not ok:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        ctx.wrap_socket(sock, server_hostname=name)
                    continue
                with ctx.wrap_socket(sock, server_hostname=name) as tls:
                    tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        hook.stop()
