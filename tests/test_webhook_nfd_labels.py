"""The label-based form of `nodecompat webhook --nfd-labels` end to end: more fitting nodes than
--max-node-names, a cluster running NFD with the NodeFeatureRule that `nodecompat translate --to
nodefeaturerule --name REPO` prints, and /mutate over HTTPS against a real fleet (daemons on the fixture
hosts, an aggregator, artifacts in Debian's docker-registry).

Playing NFD's master: each node's labels are the rule `labels` of every rule of the translated
NodeFeatureRule that matches the features *that node's daemon reports* (GetFeatures), evaluated with
NFD's rule semantics (matchFeatures ANDed, each matchAny element ORed: nfd-master's
pkg/apis/nfd/nodefeaturerule/rule.go Execute, as tests/test_translate.py checks it) — plus the nodes'
own labels. The patched pod's affinity must then admit exactly the nodes the aggregator says fit every
image (kubernetes.io/hostname nowhere in it), and keep the pod's own nodeSelector and terms. Without
--nfd-labels the same pod follows --failure-policy and says why."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support_fleet import (
    SPEC_RANKED,
    default_labels,
)
from support_registry import push_image, push_raw_artifact, registry, subject_of  # noqa: F401 (fixture)
from support_webhook import WebhookProc, admits, apply, fleet_behind_webhooks, pod, push_spec_images, review

from nodecompat.clients.fleet_client import FleetClient
from nodecompat.clients.node_client import NodeClient
from nodecompat.engine.evaluate import evaluate
from nodecompat.engine.spec import parse_spec

pytestmark = pytest.mark.registry
K8S = kubernetes_validate.latest_version()
# Two images: "train" fits every fixture node (its cpu-only set), "gpu" only the nodes with a GPU vendor.
SPEC_GPU = SPEC_RANKED.split("- {description: cpu only")[0]
SPECS = {"train": SPEC_RANKED, "gpu": SPEC_GPU}


@dataclass
class World:
    images: dict[str, str]
    fits: dict[str, set[str]]  # image name -> nodes the aggregator says fit
    node_labels: dict[str, dict[str, str]]  # as the cluster sees them with NFD running the translated rules
    labels_hook: WebhookProc
    fail_hook: WebhookProc
    ignore_hook: WebhookProc


def _translated_rule(tmp: Path, name: str, spec: str) -> dict[str, Any]:
    path = tmp / f"{name}.yaml"
    path.write_text(spec)
    done = subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", "translate", "--spec", str(path),
                           "--to", "nodefeaturerule", "--name", name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (obj,) = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert obj["kind"] == "NodeFeatureRule"
    return obj


def _nfd_labels(rule_obj: dict[str, Any], features: Any) -> dict[str, str]:
    """The labels nfd-master applies on a node with `features` for this NodeFeatureRule."""
    out: dict[str, str] = {}
    for rule in rule_obj["spec"]["rules"]:
        body = {k: v for k, v in rule.items() if k in ("matchFeatures", "matchAny")}
        as_spec = yaml.safe_dump({"version": "v1alpha1", "compatibilities": [{"rules": [{"name": "r", **body}]}]})
        if evaluate(parse_spec(as_spec), features).compatible:
            out.update(rule["labels"])
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[World]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("webhook-nfd")
    images = push_spec_images(registry.host, "nfd", SPECS, tmp)
    rules = {name: _translated_rule(tmp, name, spec) for name, spec in SPECS.items()}
    hooks = [("--max-node-names", "1", *extra)
             for extra in (("--nfd-labels",), ("--failure-policy", "fail"), ("--failure-policy", "ignore"))]
    with fleet_behind_webhooks(tmp, hooks) as fleet:
        own = default_labels()
        node_labels: dict[str, dict[str, str]] = {}
        for p in fleet.procs:
            with NodeClient(p.address) as client:
                _, probe_round = client.get_features()
            node_labels[p.name] = {**own[p.name], "kubernetes.io/hostname": p.name}
            for r in rules.values():
                node_labels[p.name].update(_nfd_labels(r, probe_round.features))
        fits = {}
        with FleetClient(fleet.aggregator) as client:
            for name, spec in SPECS.items():
                answer = client.validate(spec_text=spec, timeout=20)
                fits[name] = {n.name for n in answer.nodes if n.compatible}
        yield World(images, fits, node_labels, *fleet.hooks)


def _admitted(world: World, p: dict[str, Any]) -> set[str]:
    return {n for n, labels in world.node_labels.items() if admits(p, labels, n)}


def test_the_fleet_is_what_the_test_needs(world: World) -> None:
    # more fitting nodes than --max-node-names 1 for both images, and the images differ
    assert world.fits["train"] == {"h100", "mi300", "vm"} and world.fits["gpu"] == {"h100", "mi300"}
    # NFD (playing its master) labels each node with the sets it fits, from its daemon's facts
    assert world.node_labels["h100"]["nodecompat.io/gpu.set0"] == "true"
    assert "nodecompat.io/gpu.set1" not in world.node_labels["h100"]
    assert not any(k.startswith("nodecompat.io/gpu.") for k in world.node_labels["vm"])


def test_past_max_node_names_the_label_form_admits_exactly_the_nodes_fitting_every_image(world: World) -> None:
    p = pod("train", [world.images["train"], world.images["gpu"]], init=[world.images["train"]])
    kubernetes_validate.validate(p, K8S, strict=True)
    resp = world.labels_hook.admit("/mutate", review(p))
    assert resp["allowed"] is True, resp
    patched = apply(p, resp)
    kubernetes_validate.validate(patched, K8S, strict=True)
    summary = json.loads(patched["metadata"]["annotations"]["nodecompat.io/compatibility"])
    assert summary["form"] == "nfd-labels" and summary["fitting"] == 2 and summary["total"] == 3
    affinity = json.dumps(patched["spec"]["affinity"])
    assert "kubernetes.io/hostname" not in affinity and "nodecompat.io/gpu." in affinity
    assert _admitted(world, patched) == world.fits["train"] & world.fits["gpu"] == {"h100", "mi300"}
    # the preferred terms follow the spec's weights: set0 (nvidia, weight 10) above set1 (amd, weight 5)
    prefs = patched["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    weight = {t["preference"]["matchExpressions"][0]["key"]: t["weight"] for t in prefs}
    assert weight["nodecompat.io/gpu.set0"] > weight["nodecompat.io/gpu.set1"]


def test_the_label_form_keeps_the_pods_own_terms_and_node_selector(world: World) -> None:
    own_terms = [{"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["amd"]}]},
                 {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]
    p = pod("own", [world.images["train"]], nodeSelector={"zone": "a"}, affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": own_terms}}})
    before = _admitted(world, p)
    assert before == {"mi300"}
    resp = world.labels_hook.admit("/mutate", review(p))
    patched = apply(p, resp)
    kubernetes_validate.validate(patched, K8S, strict=True)
    assert patched["spec"]["nodeSelector"] == {"zone": "a"}
    assert _admitted(world, patched) == before & world.fits["train"]
    terms = patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    for term in terms:  # every term still carries one of the pod's own requirements
        assert any(e in [t["matchExpressions"][0] for t in own_terms] for e in term["matchExpressions"])


@pytest.mark.parametrize("policy", ["fail", "ignore"])
def test_without_nfd_labels_past_max_node_names_the_failure_policy_decides_and_says_why(
    world: World, policy: str
) -> None:
    p = pod("train", [world.images["train"]])
    hook = world.fail_hook if policy == "fail" else world.ignore_hook
    resp = hook.admit("/mutate", review(p))
    if policy == "fail":
        assert resp["allowed"] is False
        text = resp["status"]["message"]
    else:
        assert resp["allowed"] is True
        text = resp["warnings"][0]
        assert "affinity" not in apply(p, resp)["spec"]  # admitted unchanged but for the annotation
    assert "more than --max-node-names 1" in text and "--nfd-labels" in text, text
