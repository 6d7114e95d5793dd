"""AdmissionReview (admission.k8s.io/v1) in and out, read as hostile input.

The API server sends `{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {uid,
kind, resource, operation, object, dryRun, ...}}` and expects `{"apiVersion", "kind", "response": {uid,
allowed, status?, patchType?, patch?, warnings?}}` with the same uid
(k8s.io/api/admission/v1/types.go). Everything is checked before use: size (the HTTP layer bounds the
body), JSON nesting depth, types of every field read, and the number of containers; a review that is not
one is answered 400 by the server, never with a guessed uid.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "admission.k8s.io/v1"
SKIP_ANNOTATION = "nodecompat.io/skip"
SUMMARY_ANNOTATION = "nodecompat.io/compatibility"
MAX_REVIEW_BYTES = 3 * 1024 * 1024  # etcd's 1.5 MiB object limit, twice, plus the review's envelope
MAX_JSON_DEPTH = 64
MAX_CONTAINERS = 256  # containers + initContainers read from one pod
MAX_WARNING_CHARS = 512  # the API server truncates warnings at 4 KiB total; keep each short


class ReviewError(ValueError):
    """Not an AdmissionReview this webhook can answer (HTTP 400); the message says what is wrong."""


@dataclass
class PodReview:
    """What the webhook needs from one review."""

    uid: str
    pod: dict[str, Any]
    images: list[str] = field(default_factory=list)
    dry_run: bool = False
    operation: str = ""
    namespace: str = ""
    skip: bool = False
    is_pod_create: bool = True
    parsed_in: int = 0  # the id of the process that parsed the body (os.getpid(); for logs and tests)


def _depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def parse_review(body: bytes) -> PodReview:
    """Parse an AdmissionReview; ReviewError when it is not one (bad JSON, depth, types, missing uid)."""
    if len(body) > MAX_REVIEW_BYTES:
        raise ReviewError(f"AdmissionReview is larger than {MAX_REVIEW_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ReviewError(f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict) or not _depth_ok(data, MAX_JSON_DEPTH):
        raise ReviewError(f"body is not a JSON object of at most {MAX_JSON_DEPTH} levels")
    if data.get("apiVersion") != API_VERSION or data.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected apiVersion {API_VERSION} kind AdmissionReview (admissionReviewVersions: [v1])")
    req = data.get("request")
    if not isinstance(req, dict):
        raise ReviewError("AdmissionReview has no request object")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 128:
        raise ReviewError("request.uid must be a non-empty string of at most 128 characters")
    out = PodReview(uid=uid, pod={})
    out.dry_run = req.get("dryRun") is True
    operation, namespace, kind = req.get("operation"), req.get("namespace"), req.get("kind")
    out.operation = operation if isinstance(operation, str) else ""
    out.namespace = namespace if isinstance(namespace, str) else ""
    if not isinstance(kind, dict):
        kind = {}
    sub = req.get("subResource")
    out.is_pod_create = (
        kind.get("group", "") == "" and kind.get("kind") == "Pod" and out.operation == "CREATE" and not sub
    )
    if not out.is_pod_create:
        return out  # answered "allowed, unchanged": the configuration should not have sent it
    pod = req.get("object")
    if not isinstance(pod, dict):
        raise ReviewError("request.object must be the Pod")
    spec = pod.get("spec")
    meta = pod.get("metadata", {})
    if not isinstance(spec, dict) or not isinstance(meta, dict):
        raise ReviewError("request.object must be a Pod with metadata and spec objects")
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise ReviewError("metadata.annotations must be an object")
    out.pod = pod
    out.skip = annotations.get(SKIP_ANNOTATION) == "true"
    images: list[str] = []
    for key in ("initContainers", "containers"):
        lst = spec.get(key) or []
        if not isinstance(lst, list):
            raise ReviewError(f"spec.{key} must be a list")
        for i, c in enumerate(lst):
            if not isinstance(c, dict) or not isinstance(c.get("image"), str) or not c["image"]:
                raise ReviewError(f"spec.{key}[{i}].image must be a non-empty string")
            images.append(c["image"])
    if len(images) > MAX_CONTAINERS:
        raise ReviewError(f"the pod has more than {MAX_CONTAINERS} containers")
    out.images = list(dict.fromkeys(images))
    out.parsed_in = os.getpid()
    return out


def parse_review_slim(body: bytes) -> PodReview:
    """parse_review, keeping of the pod only what an answer is built from (spec.affinity and whether
    metadata.annotations is an object): the function a worker process runs, so that what travels back to
    the server is small whatever the body held (up to MAX_REVIEW_BYTES). Same errors as parse_review."""
    out = parse_review(body)
    if out.pod:
        spec = out.pod.get("spec") or {}
        meta = out.pod.get("metadata") or {}
        slim: dict[str, Any] = {"metadata": {}, "spec": {}}
        if "affinity" in spec:
            slim["spec"]["affinity"] = spec["affinity"]
        if isinstance(meta.get("annotations"), dict):
            slim["metadata"]["annotations"] = {}
        out.pod = slim
    out.parsed_in = os.getpid()
    return out


def review_uid_or_none(body: bytes) -> str | None:
    """The uid of a review that failed other checks, when it can be read at all (for a 200 deny)."""
    try:
        data = json.loads(body) if len(body) <= MAX_REVIEW_BYTES else None
    except (ValueError, RecursionError):
        return None
    req = data.get("request") if isinstance(data, dict) else None
    uid = req.get("uid") if isinstance(req, dict) else None
    return uid if isinstance(uid, str) and 0 < len(uid) <= 128 else None


def response(
    uid: str,
    allowed: bool,
    *,
    message: str = "",
    code: int = 0,
    patch: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The AdmissionReview answer: same uid, JSONPatch base64-encoded (patchType JSONPatch)."""
    resp: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if message or code:
        resp["status"] = {"code": code or (200 if allowed else 403), "message": message[:4096]}
        if not allowed:
            resp["status"]["reason"] = "Forbidden" if (code or 403) == 403 else "InternalError"
    if patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        resp["warnings"] = [w[:MAX_WARNING_CHARS] for w in warnings[:8]]
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": resp}
