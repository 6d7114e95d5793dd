"""Playing the Kubernetes API server against `nodecompat webhook`: AdmissionReviews as the API server
sends them (admission.k8s.io/v1, k8s.io/api/admission/v1/types.go), over HTTPS with the webhook's
certificate verified against the test CA, and a nodeAffinity evaluator for the patched pods
(k8s.io/component-helpers/scheduling/corev1/nodeaffinity: terms ORed, requirements ANDed, nodeSelector
ANDed with the required affinity)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import requests
from support_daemon import free_port, stop_process
from support_fleet import Certs, Proc, aggregator, default_labels, make_certs, start_fleet, write_nodes_file
from support_registry import push_image, push_raw_artifact, subject_of

from nodecompat.server.inventory.inventory_sync import SyncConfig
from nodecompat.server.webhook.webhook import WebhookConfig, serve

ALLOW_TEST_REGISTRY = ("--allowed-registries", "http://127.0.0.1:*", "--plain-http")  # the loopback registries


def review(pod: dict[str, Any], *, dry_run: bool = False, operation: str = "CREATE") -> dict[str, Any]:
    """An AdmissionReview for a Pod CREATE, with the fields the API server fills in."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": "team-a",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:team-a:deployer", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def pod(name: str, containers: Sequence[str], init: Sequence[str] = (), **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a", "labels": {"app": name}},
        "spec": {
            **({"initContainers": [{"name": f"init{i}", "image": im} for i, im in enumerate(init)]} if init else {}),
            "containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(containers)],
            **spec,
        },
    }


class WebhookProc:
    """`nodecompat webhook` as a process; `env` replaces its environment, `stdin` is written to it (for
    --registry-password-stdin) and closed."""

    def __init__(self, tmp: Path, ca: Path, cert: Path, key: Path, aggregator: str, *args: str,
                 env: Mapping[str, str] | None = None, stdin: str | None = None) -> None:
        self.port = free_port()
        self.ca = ca
        self.url = f"https://127.0.0.1:{self.port}"
        self.log = tmp / f"webhook-{self.port}.log"
        cmd = [sys.executable, "-m", "nodecompat.clients.cli", "webhook", "--listen", f"127.0.0.1:{self.port}",
               "--tls-cert", str(cert), "--tls-key", str(key), "--aggregator", aggregator, *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                     env=dict(env) if env is not None else None)
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()
        self.session = requests.Session()
        self.session.verify = str(ca)
        self.session.trust_env = False  # never a proxy: the API server dials the webhook directly

    def wait_ready(self, timeout: float = 30.0) -> WebhookProc:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"webhook exited {self.proc.returncode}: {self.log.read_text()}")
            try:
                if self.session.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"webhook not ready: {self.log.read_text()}")

    def post(self, path: str, body: Any, *, timeout: float = 30.0, api_timeout: int = 10) -> requests.Response:
        """POST as the API server does: `api_timeout` is the webhook's timeoutSeconds (?timeout=Ns), which
        may shorten the webhook's own --deadline to api_timeout - 1 s (server/webhook/webhook.py _deadline)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.session.post(f"{self.url}{path}?timeout={api_timeout}s", data=data, timeout=timeout,
                                 headers={"Content-Type": "application/json"})

    def admit(self, path: str, rev: dict[str, Any], *, api_timeout: int = 10) -> dict[str, Any]:
        r = self.post(path, rev, api_timeout=api_timeout)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
        assert out["response"]["uid"] == rev["request"]["uid"]
        return out["response"]

    def stop(self) -> None:
        stop_process(self.proc, 10)


def patch_of(resp: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "patch" not in resp:
        return []
    assert resp["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(resp["patch"]))


def apply(pod_obj: dict[str, Any], resp: Mapping[str, Any]) -> dict[str, Any]:
    return jsonpatch.JsonPatch(patch_of(resp)).apply(pod_obj)


def _requirement(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = req["key"], req["operator"], req.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        if key not in labels:
            return False
        a, b = int(labels[key]), int(values[0])
        return a > b if op == "Gt" else a < b
    raise AssertionError(f"unknown operator {op}")


def admits(pod_obj: Mapping[str, Any], labels: Mapping[str, str], name: str = "") -> bool:
    """Whether the scheduler's required node affinity + nodeSelector admit a node with `labels` (and
    `name`, for matchFields on metadata.name, the only field Kubernetes supports there)."""
    spec = pod_obj["spec"]
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    req = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not req:
        return True
    fields = {"metadata.name": name}
    return any(all(_requirement(r, labels) for r in t.get("matchExpressions") or [])
               and all(_requirement(r, fields) for r in t.get("matchFields") or [])
               for t in req["nodeSelectorTerms"])


@contextlib.contextmanager
def webhook_in_thread(config: WebhookConfig) -> Iterator[None]:
    """Serve `config` (server/webhook/webhook.py serve) on an event loop in a daemon thread while the block runs;
    returns once the server listens, stops it (15 s bound) on exit."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        started = asyncio.Event()
        task = asyncio.ensure_future(serve(config, started, stop[0]))
        await started.wait()
        ready.set()
        await task

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(15)
        loop.close()


def push_spec_images(registry_host: str, repo: str, specs: Mapping[str, str | None], tmp: Path) -> dict[str, str]:
    """One image per name, REPO/NAME on the registry, with its spec attached as a compatibility artifact
    (none for a None spec); name -> image reference."""
    images = {}
    for name, spec in specs.items():
        image = push_image(registry_host, f"{repo}/{name}", tmp)
        if spec is not None:
            push_raw_artifact(registry_host, f"{repo}/{name}", subject_of(image), layers=[spec.encode()])
        images[name] = image.reference
    return images


@dataclass
class WebhookFleet:
    procs: list[Proc]  # the fixture daemons (support_fleet.start_fleet)
    aggregator: str  # its address
    certs: Certs  # the webhooks' serving certificate and its CA
    hooks: list[WebhookProc]  # one per args tuple given, ready


@contextlib.contextmanager
def fleet_behind_webhooks(tmp: Path, hooks: Sequence[Sequence[str]],
                          sync: SyncConfig | None = None) -> Iterator[WebhookFleet]:
    """The fixture fleet in a nodes file (support_fleet.default_labels), an in-process aggregator over it
    (answering from its inventory when `sync` is given, live otherwise), and one `nodecompat webhook` per
    args tuple (after ALLOW_TEST_REGISTRY) with certificates made in tmp/pki; all stopped on exit."""
    certs = make_certs(tmp / "pki")
    procs = start_fleet(tmp)
    started: list[WebhookProc] = []
    try:
        nodes = write_nodes_file(tmp / "nodes.json", procs, default_labels())
        with aggregator(nodes_file=str(nodes), sync=sync) as agg:
            for args in hooks:
                started.append(WebhookProc(tmp, certs.ca, certs.cert, certs.key, agg.address, *ALLOW_TEST_REGISTRY,
                                           *args))
            for h in started:
                h.wait_ready()
            yield WebhookFleet(procs, agg.address, certs, started)
    finally:
        for h in started:
            h.stop()
        for p in procs:
            p.kill()
