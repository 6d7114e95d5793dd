"""`nodecompat webhook` against a real fleet: three daemons on the fixture hosts, an aggregator, Debian's
docker-registry with attached artifacts, and this test playing the API server over HTTPS (the webhook's
certificate verified against a CA made with openssl). Every patch is applied with jsonpatch, the patched
pod validated as a Pod (kubernetes-validate), and its affinity evaluated on the fleet's node labels."""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from support_daemon import free_port
from support_fleet import (
    FLEET,
    SPEC_NVIDIA,
    SPEC_RANKED,
    Certs,
    default_labels,
)
from support_registry import push_image, push_raw_artifact, registry, subject_of  # noqa: F401 (fixture)
from support_webhook import WebhookProc, admits, apply, fleet_behind_webhooks, patch_of, pod, push_spec_images, review

from nodecompat.server.inventory.inventory_sync import SyncConfig

pytestmark = pytest.mark.registry
K8S = kubernetes_validate.latest_version()
SPEC_NOBODY = SPEC_NVIDIA.replace('"10de"', '"ffff"')
SPEC_AMD = SPEC_NVIDIA.replace('"10de"', '"1002"')
NODE_LABELS = {name: {**labels, "kubernetes.io/hostname": name} for name, labels in default_labels().items()}


@dataclass
class World:
    images: dict[str, str]
    certs: Certs
    aggregator: str
    registry_host: str
    fail: WebhookProc
    ignore: WebhookProc
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[World]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("webhook")
    images = push_spec_images(registry.host, "webhook", {"nvidia": SPEC_NVIDIA, "ranked": SPEC_RANKED,
                                                         "nobody": SPEC_NOBODY, "amd": SPEC_AMD, "plain": None}, tmp)
    # The aggregator answers from its inventory (WatchFeatures from every daemon), as in production:
    # its summary carries the why-not exclusion counts the deny message quotes.
    with fleet_behind_webhooks(tmp, [("--failure-policy", p) for p in ("fail", "ignore")],
                               sync=SyncConfig(heartbeat=1.0, reconcile_interval=0.2)) as fleet:
        _wait_inventory(fleet.aggregator, len(fleet.procs))
        yield World(images, fleet.certs, fleet.aggregator, registry.host, fleet.hooks[0], fleet.hooks[1], tmp)


def _wait_inventory(address: str, n: int, timeout: float = 60.0) -> None:
    from nodecompat.clients.fleet_client import FleetClient

    end = time.monotonic() + timeout
    with FleetClient(address) as client:
        while time.monotonic() < end:
            if client.validate(spec_text=SPEC_NVIDIA, timeout=10).summary.from_inventory == n:
                return
            time.sleep(0.3)
    raise AssertionError(f"the aggregator's inventory did not hold the {n} nodes in {timeout} s")


def _validated(p: dict[str, Any]) -> dict[str, Any]:
    kubernetes_validate.validate(p, K8S, strict=True)
    return p


def _admitted(p: dict[str, Any]) -> set[str]:
    return {n for n, labels in NODE_LABELS.items() if admits(p, labels, n)}


def _summary(p: dict[str, Any]) -> dict[str, Any]:
    return json.loads(p["metadata"]["annotations"]["nodecompat.io/compatibility"])


def test_two_containers_and_an_init_container_are_placed_on_the_nodes_fitting_all_images(world: World) -> None:
    p = _validated(pod("train", [world.images["ranked"], world.images["nvidia"]], init=[world.images["ranked"]]))
    resp = world.fail.admit("/mutate", review(p))
    assert resp["allowed"] is True
    patched = _validated(apply(p, resp))
    assert _admitted(patched) == {"h100"}  # nvidia fits h100 only; ranked fits all: the intersection
    summary = _summary(patched)
    assert summary["fitting"] == 1 and summary["total"] == len(FLEET) and summary["form"] == "hostname"
    assert {i["image"] for i in summary["images"]} == {world.images["ranked"], world.images["nvidia"]}
    assert all(i["digest"].startswith("sha256:") and i["artifact"].startswith("sha256:") for i in summary["images"])
    assert patched["spec"]["containers"] == p["spec"]["containers"]  # nothing else touched


def test_existing_affinity_terms_and_node_selector_are_kept_and_preferences_follow_the_weights(world: World) -> None:
    own_terms = [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["nvidia", "amd"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
    ]
    own_pref = [{"weight": 3, "preference": {"matchExpressions": [{"key": "zone", "operator": "In",
                                                                   "values": ["a"]}]}}]
    p = _validated(pod("ranked", [world.images["ranked"]], nodeSelector={"zone": "a"}, affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": own_terms},
        "preferredDuringSchedulingIgnoredDuringExecution": own_pref}}))
    resp = world.fail.admit("/mutate", review(p))
    patched = _validated(apply(p, resp))
    assert patched["spec"]["nodeSelector"] == {"zone": "a"}
    terms = patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert len(terms) == 2
    for own, new in zip(own_terms, terms, strict=True):  # every own expression kept, ours ANDed to each term
        assert new["matchExpressions"][:-1] == own["matchExpressions"]
        assert new["matchExpressions"][-1] == {"key": "kubernetes.io/hostname", "operator": "In",
                                               "values": ["h100", "mi300", "vm"]}
    assert _admitted(patched) == _admitted(p) == {"h100", "mi300"}  # all fit: the pod's own constraints decide
    pref = patched["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref[0] == own_pref[0]
    assert [(t["weight"], t["preference"]["matchExpressions"][0]["values"]) for t in pref[1:]] == [
        (10, ["h100"]), (5, ["mi300"]), (1, ["vm"])]  # SPEC_RANKED's weights per set

    q = _validated(pod("nv", [world.images["nvidia"]], nodeSelector={"zone": "a"}, affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": own_terms}}}))
    patched = _validated(apply(q, world.fail.admit("/mutate", review(q))))
    assert _admitted(q) == {"h100", "mi300"} and _admitted(patched) == {"h100"}


def test_an_image_without_artifact_passes_unchanged_and_annotated(world: World) -> None:
    p = pod("plain", [world.images["plain"]])
    resp = world.fail.admit("/mutate", review(p))
    assert resp["allowed"] is True
    patched = _validated(apply(p, resp))
    assert "affinity" not in patched["spec"]
    (item,) = _summary(patched)["images"]
    assert item["artifact"] is None and "no compatibility artifact" in item["note"]
    # beside a checked image it changes nothing: the checked image decides
    q = pod("mixed", [world.images["plain"], world.images["nvidia"]])
    assert _admitted(apply(q, world.fail.admit("/mutate", review(q)))) == {"h100"}


def test_dry_run_is_answered_the_same(world: World) -> None:
    p = pod("dry", [world.images["ranked"], world.images["nvidia"]])
    wet = patch_of(world.fail.admit("/mutate", review(p)))
    dry = patch_of(world.fail.admit("/mutate", review(p, dry_run=True)))

    def no_time(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ops = copy.deepcopy(ops)
        for op in ops:
            if isinstance(op["value"], dict) and "nodecompat.io/compatibility" in op["value"]:
                s = json.loads(op["value"]["nodecompat.io/compatibility"])
                s.pop("time")
                op["value"]["nodecompat.io/compatibility"] = s
        return ops

    assert no_time(wet) == no_time(dry) and wet


def test_skip_annotation_and_other_operations_pass_unchanged(world: World) -> None:
    p = pod("skip", [world.images["nobody"]])
    p["metadata"]["annotations"] = {"nodecompat.io/skip": "true"}
    for path in ("/mutate", "/validate"):
        resp = world.fail.admit(path, review(p))
        assert resp["allowed"] is True and "patch" not in resp
    resp = world.fail.admit("/validate", review(pod("upd", [world.images["nobody"]]), operation="UPDATE"))
    assert resp["allowed"] is True


def test_validate_denies_a_pod_no_node_can_run_with_exclusion_counts(world: World) -> None:
    resp = world.fail.admit("/validate", review(pod("nobody", [world.images["nobody"]])))
    assert resp["allowed"] is False and resp["status"]["code"] == 403
    msg = resp["status"]["message"]
    assert msg.startswith("0 of 3 nodes fit this pod: 0 of 3 nodes fit") and "3 nodes" in msg and "ffff" in msg
    # the aggregator's why-not counts (nodecompat.fleet.whynot), not the webhook's own count of reasons
    assert "set #1 needs an NVIDIA GPU: 3 nodes excluded by pci.device vendor In [ffff]" in msg, msg
    resp = world.fail.admit("/validate", review(pod("two", [world.images["nvidia"], world.images["amd"]])))
    assert resp["allowed"] is False and "no node fits all images" in resp["status"]["message"]
    assert world.fail.admit("/validate", review(pod("ok", [world.images["nvidia"]])))["allowed"] is True
    # /mutate admits it unchanged with a warning (a validating webhook denies it)
    resp = world.fail.admit("/mutate", review(pod("nobody", [world.images["nobody"]])))
    assert resp["allowed"] is True and "0 of 3 nodes fit" in resp["warnings"][0]


def test_malformed_reviews_are_refused_without_guessing(world: World) -> None:
    good = review(pod("x", [world.images["nvidia"]]))
    cases: list[tuple[bytes, int]] = [
        (b"{not json", 400),
        (json.dumps({**good, "apiVersion": "admission.k8s.io/v1beta1"}).encode(), 400),
        (json.dumps({**good, "request": {**good["request"], "uid": ""}}).encode(), 400),
        (json.dumps({**good, "request": {**good["request"], "object": {"spec": {"containers": [{"image": 7}]},
                                                                       "metadata": {}}}}).encode(), 400),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"{" + b" " * (4 * 1024 * 1024) + b"}", 413),
    ]
    for body, status in cases:
        r = world.fail.post("/mutate", body)
        assert r.status_code == status, (body[:80], r.text)
    assert world.fail.session.get(f"{world.fail.url}/healthz", timeout=5).text == "ok\n"


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """A TCP listener that accepts and never answers: a peer stuck mid-call."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


def test_registry_down_follows_the_failure_policy(world: World) -> None:
    dead = f"127.0.0.1:{free_port()}/webhook/gone:v1"
    with black_hole() as hole:
        for image, api_timeout in ((dead, 10), (f"{hole}/webhook/stuck:v1", 3)):
            p = pod("down", [image])
            # the API server's timeoutSeconds of 3 s: the stuck registry is waited for 2 s, not --deadline's 8 s
            resp = world.fail.admit("/mutate", review(p), api_timeout=api_timeout)
            assert resp["allowed"] is False and resp["status"]["code"] == 503
            assert "registry" in resp["status"]["message"] or "deadline" in resp["status"]["message"]
            resp = world.ignore.admit("/mutate", review(p), api_timeout=api_timeout)
            assert resp["allowed"] is True and "not checked (failure policy ignore)" in resp["warnings"][0]
            assert "affinity" not in apply(p, resp)["spec"]
    # outside the allow-list: refused without a connection, per the same policy
    resp = world.fail.admit("/mutate", review(pod("far", ["registry.example.com/app:v1"])))
    assert resp["allowed"] is False and "allow-list" in resp["status"]["message"]


@pytest.mark.parametrize("policy", ["fail", "ignore"])
def test_aggregator_down_or_slow_is_answered_within_the_deadline(world: World, policy: str) -> None:
    deadline = 2.0
    with black_hole() as hole:
        hooks = [WebhookProc(world.tmp, world.certs.ca, world.certs.cert, world.certs.key, agg,
                             "--allowed-registries", "http://127.0.0.1:*", "--plain-http", "--failure-policy",
                             policy, "--deadline", str(deadline))
                 for agg in (f"127.0.0.1:{free_port()}", hole)]
        try:
            for h in hooks:
                h.wait_ready()
                p = pod("agg", [world.images["nvidia"]])
                started = time.monotonic()
                resp = h.admit("/mutate", review(p))
                took = time.monotonic() - started
                assert took < deadline + 5, took  # bounded by the webhook's deadline, not the peer
                if policy == "fail":
                    assert resp["allowed"] is False and "aggregator" in resp["status"]["message"] + "deadline"
                else:
                    assert resp["allowed"] is True and resp["warnings"]
                    assert "affinity" not in apply(p, resp)["spec"]
        finally:
            for h in hooks:
                h.stop()


def test_the_webhook_certificate_is_what_the_api_server_verifies(world: World) -> None:
    import requests

    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{world.fail.url}/healthz", verify=str(world.certs.dir / "rogue-ca.crt"), timeout=5)


def test_affinity_command_prints_the_block_the_webhook_adds(world: World, tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    base = [sys.executable, "-m", "nodecompat.clients.cli", "affinity", "--aggregator", world.aggregator]
    r = subprocess.run([*base, "--image", world.images["ranked"], "--plain-http", "-o", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    block = json.loads(r.stdout)
    p = pod("gitops", [world.images["ranked"]])
    hooked = apply(p, world.fail.admit("/mutate", review(p)))
    assert block["affinity"] == hooked["spec"]["affinity"]
    spec_file = tmp_path / "nv.yaml"
    spec_file.write_text(SPEC_NVIDIA)
    r = subprocess.run([*base, "--spec", str(spec_file)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    q = _validated({**pod("gitops", ["x"]), "spec": {**pod("gitops", ["x"])["spec"], **yaml.safe_load(r.stdout)}})
    assert _admitted(q) == {"h100"}
    spec_file.write_text(SPEC_NOBODY)
    r = subprocess.run([*base, "--spec", str(spec_file)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "0 of 3 nodes fit" in r.stderr and "ffff" in r.stderr and not r.stdout
