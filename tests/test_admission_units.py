"""nodecompat.admission without a fleet: the placement arithmetic, the NFD-label form agreeing with
`translate --to nodefeaturerule`, --max-node-names under both failure policies, and review parsing."""

from __future__ import annotations

import json

import jsonpatch
import pytest
from support_fleet import SPEC_RANKED
from support_webhook import admits, pod, review

from nodecompat.admission import review as rv
from nodecompat.admission.decide import ImageAnswer, NodeAnswer, Policy, decide
from nodecompat.admission.placement import MAX_TERMS, PlacementError, placement_patch
from nodecompat.engine.spec import parse_spec
from nodecompat.translate import nfd

SPEC = parse_spec(SPEC_RANKED)


def answer(fit: dict[str, int], total: int = 0, image: str = "r/app:v1") -> ImageAnswer:
    nodes = [NodeAnswer(n, True, s) for n, s in fit.items()]
    nodes += [NodeAnswer(f"other-{i}", False, 0, reasons=["pci.device vendor In [10de]"])
              for i in range(max(0, total - len(fit)))]
    return ImageAnswer(image, "fit", image_digest="sha256:" + "a" * 64, artifact_digest="sha256:" + "b" * 64,
                       spec=SPEC, spec_name="app", nodes=nodes)


def test_pod_terms_are_crossed_with_our_alternatives_and_bounded() -> None:
    p = pod("p", ["x"], affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]},
                              {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}})
    alts = [[{"key": k, "operator": "In", "values": ["true"]}] for k in ("l1", "l2")]
    out = jsonpatch.JsonPatch(placement_patch(p, alts, [], {})).apply(p)
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert len(terms) == 4 and terms[0]["matchFields"] == p["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"]
    # (n1 OR zone=a) AND (l1 OR l2)
    assert admits(out, {"zone": "a", "l2": "true"}, "n9") and admits(out, {"l1": "true"}, "n1")
    assert not admits(out, {"zone": "a"}, "n9") and not admits(out, {"l1": "true"}, "n9")
    with pytest.raises(PlacementError):
        placement_patch(p, alts * (MAX_TERMS // 2 + 1), [], {})


def test_past_max_node_names_the_label_form_uses_the_translated_rule_labels() -> None:
    a = answer({f"n{i}": 10 for i in range(30)}, total=40)
    d = decide(pod("p", ["r/app:v1"]), [a], Policy(max_node_names=10, nfd_labels=True))
    assert d.allowed and d.annotation["form"] == "nfd-labels"
    patched = jsonpatch.JsonPatch(d.patch).apply(pod("p", ["r/app:v1"]))
    rule_labels = {k for r in nfd.node_feature_rule(SPEC, "app")["spec"]["rules"] for k in r["labels"]}
    terms = patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert {t["matchExpressions"][0]["key"] for t in terms} == rule_labels  # what NFD writes, the pod asks
    assert patched["spec"]["affinity"] == nfd.label_affinity(SPEC, "app")  # same block as translate prints


@pytest.mark.parametrize(("policy", "allowed"), [("fail", False), ("ignore", True)])
def test_past_max_node_names_without_nfd_labels_follows_the_failure_policy(policy: str, allowed: bool) -> None:
    d = decide(pod("p", ["r/app:v1"]), [answer({f"n{i}": 1 for i in range(30)})],
               Policy(max_node_names=10, failure_policy=policy))
    assert d.allowed is allowed
    text = d.message if not allowed else d.warnings[0]
    assert "more than --max-node-names 10" in text and "--nfd-labels" in text
    if allowed:
        assert not any(op["path"].startswith("/spec") for op in d.patch)


def test_deny_message_counts_reasons_when_the_aggregator_sent_no_why_not() -> None:
    d = decide(pod("p", ["r/app:v1"]), [answer({}, total=97)], Policy(mutate=False))
    assert not d.allowed and d.code == 403
    assert d.message == ("0 of 97 nodes fit this pod: 0 of 97 nodes fit r/app:v1: "
                         "97 nodes: pci.device vendor In [10de]")


def test_reviews_of_other_kinds_pass_and_bad_shapes_are_refused() -> None:
    rev = review(pod("p", ["x"]))
    rev["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    parsed = rv.parse_review(json.dumps(rev).encode())
    assert not parsed.is_pod_create
    rev = review(pod("p", ["x", "x"], init=["y"]))
    assert rv.parse_review(json.dumps(rev).encode()).images == ["y", "x"]
    for bad in (b"null", b"[]", json.dumps({**rev, "request": []}).encode(),
                json.dumps({**rev, "request": {**rev["request"], "object": {"metadata": {}, "spec": {
                    "containers": [{"image": "x"}] * (rv.MAX_CONTAINERS + 1)}}}}).encode()):
        with pytest.raises(rv.ReviewError):
            rv.parse_review(bad)
    out = rv.response("u", False, message="m" * 10_000, code=403)
    assert len(out["response"]["status"]["message"]) == 4096 and out["response"]["uid"] == "u"


def test_deny_message_uses_the_aggregators_exclusion_counts_and_mutate_can_deny() -> None:
    from nodecompat.fleet.whynot import Exclusion, SetExclusions

    a = answer({}, total=120)
    a.why_not = [SetExclusions(index=0, description="gpu", nodes_failed=120, exclusions=[
        Exclusion("expression", "rules[0] nv: matchFeatures[0] pci.device", "pci.device vendor In [10de]", 97),
        Exclusion("expression", "rules[0] nv: matchFeatures[1] kernel.loadedmodule",
                  "kernel.loadedmodule nvidia Exists", 23)])]
    for policy in (Policy(mutate=False), Policy(mutate=True, deny_when_no_fit=True)):
        d = decide(pod("p", ["r/app:v1"]), [a], policy)
        assert not d.allowed and d.code == 403 and not d.patch
        assert d.message == ("0 of 120 nodes fit this pod: 0 of 120 nodes fit r/app:v1: set #1 gpu: 97 nodes "
                             "excluded by pci.device vendor In [10de]; 23 by kernel.loadedmodule nvidia Exists")
    d = decide(pod("p", ["r/app:v1"]), [a], Policy(mutate=True))
    assert d.allowed and "0 of 120 nodes fit" in d.warnings[0]


@pytest.mark.parametrize("state", ["error", "no-artifact"])
def test_giant_image_names_keep_the_answer_below_the_annotation_limit(state: str) -> None:
    """Review finding: 256 images of 10,000 characters each (a 2.6 MB review, under MAX_REVIEW_BYTES) under
    --failure-policy=ignore gave a 2.6 MB patch whose annotation Kubernetes refuses (256 KiB for all of a
    pod's annotations), so the pod the policy meant to admit unchanged failed. Names are shortened there."""
    images = [f"r.example.com/{i}/" + "a" * 10_000 + ":1" for i in range(rv.MAX_CONTAINERS)]
    p = pod("giant", images)
    answers = [ImageAnswer(img, state, error="registry: image reference is too long" if state == "error" else "")
               for img in images]
    for mutate in (True, False):
        d = decide(p, answers, Policy(mutate=mutate, failure_policy="ignore"))
        assert d.allowed
        body = json.dumps(rv.response("u", d.allowed, message=d.message, code=d.code, patch=d.patch,
                                      warnings=d.warnings))
        assert len(body) < 256 * 1024, len(body)
        if mutate and d.patch:
            applied = jsonpatch.apply_patch(p, d.patch)
            annotations = applied["metadata"].get("annotations", {})
            assert sum(len(k) + len(v) for k, v in annotations.items()) < 256 * 1024
