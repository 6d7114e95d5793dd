"""NFD objects from a spec: NodeFeatureRule (labels per set), NodeFeatureGroup (one per set), and the
nodeAffinity on the labels.

Shapes follow NFD's api/nfd/v1alpha1/types.go (NodeFeatureRuleSpec.rules[] {name, labels,
matchFeatures, matchAny}; NodeFeatureGroupSpec.featureGroupRules[] {name, matchFeatures, matchAny}).
NFD's master only writes labels outside its own namespaces when they are allowed
(pkg/nfd-master/nfd-master.go filterFeatureLabel: `-extra-label-ns`), so the rule carries an annotation
saying nfd-master needs `extraLabelNs: [nodecompat.io]`.
"""

from __future__ import annotations

from typing import Any

from nodecompat.engine.spec import Spec
from nodecompat.translate.common import (
    TranslateError,
    dns_name,
    kube_weights,
    label_name,
    merge_set,
    set_names,
    weight_order,
)

NFD_API = "nfd.k8s-sigs.io/v1alpha1"
EXTRA_LABEL_NS_NOTE = "nfd-master must allow this label namespace: extraLabelNs: [nodecompat.io]"


def _merged(spec: Spec) -> list[tuple[int, str, dict[str, Any]]]:
    names = set_names(spec)
    out = []
    for i, c in enumerate(spec.compatibilities):
        out.append((i, names[i], merge_set(c, f"compatibilities[{i}]").to_nfd()))
    return out


def node_feature_rule(spec: Spec, spec_name: str) -> dict[str, Any]:
    """One NodeFeatureRule labelling nodes that fit each set `nodecompat.io/<spec-name>.<set>: "true"`.

    TranslateError when a set cannot be expressed exactly (see common.merge_set) or a label name is invalid.
    """
    if not spec.compatibilities:
        raise TranslateError("the spec has no compatibility sets")
    rules = []
    for _i, set_name, body in _merged(spec):
        rules.append({"name": f"{spec_name}.{set_name}", "labels": {label_name(spec_name, set_name): "true"}, **body})
    return {
        "apiVersion": NFD_API,
        "kind": "NodeFeatureRule",
        "metadata": {
            "name": dns_name(f"nodecompat-{spec_name}", "nodecompat"),
            "annotations": {"nodecompat.io/note": EXTRA_LABEL_NS_NOTE},
        },
        "spec": {"rules": rules},
    }


def node_feature_groups(spec: Spec, spec_name: str) -> list[dict[str, Any]]:
    """One NodeFeatureGroup per set (NFD lists the member nodes in its status.nodes)."""
    if not spec.compatibilities:
        raise TranslateError("the spec has no compatibility sets")
    out = []
    for i, set_name, body in _merged(spec):
        c = spec.compatibilities[i]
        meta: dict[str, Any] = {"name": dns_name(f"nodecompat-{spec_name}-{set_name}", f"nodecompat-set{i}")}
        if c.description:
            meta["annotations"] = {"nodecompat.io/description": c.description[:256]}
        out.append(
            {
                "apiVersion": NFD_API,
                "kind": "NodeFeatureGroup",
                "metadata": meta,
                "spec": {"featureGroupRules": [{"name": f"{spec_name}.{set_name}", **body}]},
            }
        )
    return out


def label_affinity(spec: Spec, spec_name: str) -> dict[str, Any]:
    """The nodeAffinity on the NodeFeatureRule's labels: required = any set's label (terms are ORed),
    preferred = one term per set weighted by the spec's weights (kube_weights)."""
    names = set_names(spec)
    weights = kube_weights(spec)
    required = []
    preferred = []
    for i in weight_order(spec):
        expr = {"key": label_name(spec_name, names[i]), "operator": "In", "values": ["true"]}
        required.append({"matchExpressions": [expr]})
        preferred.append({"weight": weights[i], "preference": {"matchExpressions": [dict(expr)]}})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": required},
            "preferredDuringSchedulingIgnoredDuringExecution": preferred,
        }
    }
