"""From per-image fleet answers to an admission decision (allowed, patch, message, warnings).

Rules (issue 13): a pod runs on one node, so the fitting nodes are the intersection over the pod's images
that have a compatibility artifact; images without one pass (and are named in the annotation); a registry
or aggregator failure, or the deadline, follows the failure policy (`fail`: deny saying why; `ignore`:
admit unchanged with a warning). /validate (and /mutate with deny_when_no_fit) denies a pod no node can
run, with the exclusion counts the aggregator computed (nodecompat.fleet.whynot), or, when it sent none,
counts of the per-node reasons. Past max_node_names fitting nodes the hostname form is not used: the
NFD-label form when the cluster runs the translated NodeFeatureRule (nfd_labels), else the failure policy.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodecompat.admission.placement import PlacementError, combine_alternatives, hostname_requirement, placement_patch
from nodecompat.admission.review import SUMMARY_ANNOTATION
from nodecompat.engine.spec import Spec
from nodecompat.fleet.whynot import summary_lines
from nodecompat.translate.common import kube_weights, label_name, set_names

FAIL = "fail"
IGNORE = "ignore"
MAX_MESSAGE_CHARS = 2000
MAX_IMAGE_CHARS = 600  # an image name as quoted in the summary annotation


@dataclass
class NodeAnswer:
    name: str
    compatible: bool
    score: int
    status: str = "OK"
    reasons: list[str] = field(default_factory=list)


@dataclass
class ImageAnswer:
    """One image: `state` is "fit" (artifact found, fleet answered), "no-artifact" or "error"."""

    image: str
    state: str
    error: str = ""
    image_digest: str = ""
    artifact_digest: str = ""
    spec: Spec | None = None
    spec_name: str = ""
    nodes: list[NodeAnswer] = field(default_factory=list)
    why_not: list[Any] = field(default_factory=list)  # SetExclusions (dataclass or message)

    def fitting(self) -> set[str]:
        return {n.name for n in self.nodes if n.compatible and n.status == "OK"}


@dataclass
class Policy:
    mutate: bool = True
    deny_when_no_fit: bool = False
    failure_policy: str = FAIL
    max_node_names: int = 500
    nfd_labels: bool = False


@dataclass
class Decision:
    allowed: bool
    patch: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    code: int = 0
    warnings: list[str] = field(default_factory=list)
    annotation: dict[str, Any] = field(default_factory=dict)


def why_not_line(a: ImageAnswer) -> str:
    """ "F of N nodes fit IMAGE: <exclusion counts>" (the aggregator's why-not, else the nodes' reasons counted)."""
    total = len(a.nodes)
    fit = len(a.fitting())
    head = f"{fit} of {total} nodes fit {a.image}"
    lines = summary_lines(a.why_not, limit=4) if a.why_not else []
    if not lines:  # no counts from the aggregator: count the nodes' own reasons
        counts = Counter(r for n in a.nodes if not n.compatible for r in n.reasons[:3])
        failed = Counter(n.status for n in a.nodes if n.status != "OK")
        lines = [f"{c} nodes: {r}" for r, c in counts.most_common(4)]
        lines += [f"{c} nodes did not answer ({s})" for s, c in failed.most_common(2)]
    return head + (": " + "; ".join(lines) if lines else "")


def _summary(answers: Sequence[ImageAnswer], fitting: set[str] | None, total: int, form: str) -> dict[str, Any]:
    images = []
    for a in answers:
        # A reference is at most ~530 characters (255 name + host + 128 tag + digest); a pod may name 256
        # images of any length, and the annotation must stay far below Kubernetes' 256 KiB annotation total.
        image = a.image if len(a.image) <= MAX_IMAGE_CHARS else a.image[:MAX_IMAGE_CHARS] + "..."
        item: dict[str, Any] = {"image": image}
        if a.state == "fit":
            item.update(digest=a.image_digest, artifact=a.artifact_digest, fitting=len(a.fitting()))
        elif a.state == "no-artifact":
            item.update(artifact=None, note="no compatibility artifact: not checked")
        else:
            item.update(error=a.error[:300])
        images.append(item)
    out: dict[str, Any] = {
        "fitting": None if fitting is None else len(fitting),
        "total": total,
        "images": images,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if form:
        out["form"] = form
    return out


def decide(pod: dict[str, Any], answers: Sequence[ImageAnswer], policy: Policy) -> Decision:
    """The decision for one pod; `answers` has one entry per distinct image."""
    errors = [a for a in answers if a.state == "error"]
    checked = [a for a in answers if a.state == "fit"]
    total = max((len(a.nodes) for a in checked), default=0)
    if errors:
        text = "; ".join(f"{a.image}: {a.error}" for a in errors)[:MAX_MESSAGE_CHARS]
        if policy.failure_policy == FAIL:
            return Decision(
                False, message=f"nodecompat could not check the pod's images (failure policy fail): {text}", code=503
            )
        summary = _summary(answers, None, total, "")
        patch = _patch(pod, [], [], summary) if policy.mutate else []
        return Decision(
            True, patch=patch, warnings=[f"nodecompat: not checked (failure policy ignore): {text}"], annotation=summary
        )
    if not checked:
        summary = _summary(answers, None, 0, "")
        return Decision(True, patch=_patch(pod, [], [], summary) if policy.mutate else [], annotation=summary)
    fitting = set.intersection(*(a.fitting() for a in checked))
    if not fitting:
        if len(checked) > 1 and all(a.fitting() for a in checked):
            why = "no node fits all images: " + "; ".join(f"{a.image} fits {len(a.fitting())}" for a in checked)
        else:
            why = " | ".join(why_not_line(a) for a in checked if not a.fitting()) or "no node fits"
        msg = f"0 of {total} nodes fit this pod: {why}"[:MAX_MESSAGE_CHARS]
        if not policy.mutate or policy.deny_when_no_fit:
            return Decision(False, message=msg, code=403)
        summary = _summary(answers, fitting, total, "")
        return Decision(True, patch=_patch(pod, [], [], summary), warnings=[f"nodecompat: {msg}"], annotation=summary)
    if not policy.mutate:
        return Decision(True)
    placed = placement(checked, fitting, policy)
    if placed is not None:
        alternatives, preferred, form = placed
    else:
        msg = (
            f"{len(fitting)} of {total} nodes fit, more than --max-node-names {policy.max_node_names}; "
            "run NFD with the translated NodeFeatureRule (nodecompat translate --to nodefeaturerule) and give "
            "the webhook --nfd-labels"
        )
        if policy.failure_policy == FAIL:
            return Decision(False, message=f"nodecompat (failure policy fail): {msg}", code=503)
        summary = _summary(answers, fitting, total, "")
        return Decision(
            True, patch=_patch(pod, [], [], summary), warnings=[f"nodecompat: not placed: {msg}"], annotation=summary
        )
    summary = _summary(answers, fitting, total, form)
    try:
        patch = _patch(pod, alternatives, preferred, summary)
    except PlacementError as exc:
        if policy.failure_policy == FAIL:
            return Decision(False, message=f"nodecompat (failure policy fail): {exc}", code=503)
        summary["form"] = ""
        return Decision(
            True, patch=_patch(pod, [], [], summary), warnings=[f"nodecompat: not placed: {exc}"], annotation=summary
        )
    return Decision(True, patch=patch, annotation=summary)


def placement(
    checked: Sequence[ImageAnswer], fitting: set[str], policy: Policy
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]], str] | None:
    """(required alternatives, preferred terms, form) for the fitting nodes: the hostname form up to
    max_node_names, else the NFD-label form when policy.nfd_labels, else None."""
    if len(fitting) <= policy.max_node_names:
        preferred = _preferred_by_score(checked, fitting, policy.max_node_names)
        return [[hostname_requirement(sorted(fitting))]], preferred, "hostname"
    if policy.nfd_labels:
        alternatives, preferred = _label_form(checked)
        return alternatives, preferred, "nfd-labels"
    return None


def node_affinity(alternatives: Sequence[list[dict[str, Any]]], preferred: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A pod's `affinity` block holding only these (for people who deploy with GitOps)."""
    ops = placement_patch({"spec": {}, "metadata": {"annotations": {}}}, alternatives, preferred, {})
    return ops[0]["value"] if ops else {}


def _patch(pod: dict[str, Any], alternatives: Any, preferred: Any, summary: dict[str, Any]) -> list[dict[str, Any]]:
    text = json.dumps(summary, separators=(",", ":"))
    return placement_patch(pod, alternatives, preferred, {SUMMARY_ANNOTATION: text})


def _preferred_by_score(checked: Sequence[ImageAnswer], fitting: set[str], budget: int) -> list[dict[str, Any]]:
    """Per image, one preferred term per distinct score among the fitting nodes, weighted by the spec's
    weights (as Kubernetes weights, 1..100); none when every fitting node scores the same."""
    out: list[dict[str, Any]] = []
    used = 0
    for a in checked:
        by_score: dict[int, list[str]] = {}
        for n in a.nodes:
            if n.name in fitting:
                by_score.setdefault(n.score, []).append(n.name)
        if len(by_score) < 2:
            continue
        top = max([*(c.weight for c in a.spec.compatibilities), 1]) if a.spec else max(by_score)
        for score in sorted(by_score, reverse=True):
            names = by_score[score]
            used += len(names)
            if used > budget:
                return out
            weight = score if top <= 100 else round(score * 100 / top)
            out.append(
                {"weight": min(100, max(1, weight)), "preference": {"matchExpressions": [hostname_requirement(names)]}}
            )
    return out


def _label_form(checked: Sequence[ImageAnswer]) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    per_image = []
    preferred = []
    for a in checked:
        assert a.spec is not None
        names = set_names(a.spec)
        weights = kube_weights(a.spec)
        alts = []
        for i in range(len(a.spec.compatibilities)):
            req = {"key": label_name(a.spec_name, names[i]), "operator": "In", "values": ["true"]}
            alts.append([req])
            preferred.append({"weight": weights[i], "preference": {"matchExpressions": [dict(req)]}})
        per_image.append(alts)
    return combine_alternatives(per_image), preferred
