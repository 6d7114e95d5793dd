"""Where a pod may run, as a JSONPatch (RFC 6902) on the Pod: nodeAffinity that admits only fitting nodes.

Kubernetes ORs nodeSelectorTerms and ANDs the expressions inside a term (k8s.io/api/core/v1 NodeSelector).
The pod's own constraints are kept by ANDing ours into every term it has: with our requirement given as
alternatives A1..An (one for the hostname form; one per compatibility set for the NFD-label form), the
new terms are every pod term x every alternative (the pod's expressions and fields first), bounded by
MAX_TERMS. `spec.nodeSelector` is never touched (Kubernetes ANDs it with the affinity).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from typing import Any

HOSTNAME_LABEL = "kubernetes.io/hostname"
MAX_TERMS = 64  # nodeSelectorTerms after crossing the pod's terms with our alternatives
_REQ = "requiredDuringSchedulingIgnoredDuringExecution"
_PREF = "preferredDuringSchedulingIgnoredDuringExecution"

Requirement = dict[str, Any]  # a NodeSelectorRequirement {key, operator, values}


class PlacementError(ValueError):
    """The pod's affinity and ours cannot be combined within the limits (the message says why)."""


def _pointer(*parts: str) -> str:
    """An RFC 6901 JSON pointer."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def hostname_requirement(names: Sequence[str]) -> Requirement:
    return {"key": HOSTNAME_LABEL, "operator": "In", "values": sorted(names)}


def combine_alternatives(per_image: Sequence[Sequence[list[Requirement]]]) -> list[list[Requirement]]:
    """AND across images of (OR of alternatives): the cross product, each alternative a requirement list."""
    total = 1
    for alts in per_image:
        total *= max(1, len(alts))
    if total > MAX_TERMS:
        raise PlacementError(
            f"the images' compatibility sets combine into {total} node selector terms (limit {MAX_TERMS})"
        )
    return [[r for alt in combo for r in alt] for combo in itertools.product(*per_image)]


def placement_patch(
    pod: dict[str, Any],
    alternatives: Sequence[list[Requirement]],
    preferred: Sequence[dict[str, Any]],
    annotations: dict[str, str],
) -> list[dict[str, Any]]:
    """JSONPatch ops: required terms = pod terms x `alternatives` (none given: unchanged), `preferred` terms
    appended, `annotations` set. PlacementError past MAX_TERMS."""
    ops: list[dict[str, Any]] = []
    spec = pod.get("spec") or {}
    affinity = spec.get("affinity")
    node_aff = affinity.get("nodeAffinity") if isinstance(affinity, dict) else None
    new_node_aff: dict[str, Any] = {}
    if alternatives:
        pod_terms: list[dict[str, Any]] = []
        if isinstance(node_aff, dict) and isinstance(node_aff.get(_REQ), dict):
            pod_terms = [t for t in node_aff[_REQ].get("nodeSelectorTerms") or [] if isinstance(t, dict)]
        if not pod_terms:
            pod_terms = [{}]
        if len(pod_terms) * len(alternatives) > MAX_TERMS:
            raise PlacementError(
                f"the pod's {len(pod_terms)} node selector terms times {len(alternatives)} "
                f"alternatives pass {MAX_TERMS} terms"
            )
        terms = []
        for t, alt in itertools.product(pod_terms, alternatives):
            nt = copy.deepcopy(t)
            nt["matchExpressions"] = [*(nt.get("matchExpressions") or []), *copy.deepcopy(alt)]
            terms.append(nt)
        new_node_aff[_REQ] = {"nodeSelectorTerms": terms}
    if preferred:
        new_node_aff[_PREF] = copy.deepcopy(list(preferred))
    if new_node_aff:
        if not isinstance(affinity, dict):
            ops.append({"op": "add", "path": _pointer("spec", "affinity"), "value": {"nodeAffinity": new_node_aff}})
        elif not isinstance(node_aff, dict):
            ops.append({"op": "add", "path": _pointer("spec", "affinity", "nodeAffinity"), "value": new_node_aff})
        else:
            base = ("spec", "affinity", "nodeAffinity")
            if _REQ in new_node_aff:
                if isinstance(node_aff.get(_REQ), dict):
                    ops.append(
                        {
                            "op": "replace",
                            "path": _pointer(*base, _REQ, "nodeSelectorTerms"),
                            "value": new_node_aff[_REQ]["nodeSelectorTerms"],
                        }
                    )
                else:
                    ops.append({"op": "add", "path": _pointer(*base, _REQ), "value": new_node_aff[_REQ]})
            if _PREF in new_node_aff:
                if isinstance(node_aff.get(_PREF), list):
                    ops.extend(
                        {"op": "add", "path": _pointer(*base, _PREF, "-"), "value": p} for p in new_node_aff[_PREF]
                    )
                else:
                    ops.append({"op": "add", "path": _pointer(*base, _PREF), "value": new_node_aff[_PREF]})
    meta = pod.get("metadata") or {}
    if annotations:
        if not isinstance(meta.get("annotations"), dict):
            ops.append({"op": "add", "path": _pointer("metadata", "annotations"), "value": dict(annotations)})
        else:
            ops.extend(
                {"op": "add", "path": _pointer("metadata", "annotations", k), "value": v}
                for k, v in annotations.items()
            )
    return ops
