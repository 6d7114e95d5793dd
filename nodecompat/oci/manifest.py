"""Descriptors, and defensive parsing of manifests and indexes fetched from a registry.

Everything a registry sends is untrusted: JSON that is not an object, descriptors with a wrong type,
a negative size or a malformed digest become INVALID_ARGUMENT errors naming the source, never a
KeyError or TypeError deep in the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nodecompat.oci.errors import InvalidArgumentError
from nodecompat.oci.reference import validate_digest

MAX_DESCRIPTORS = 10_000


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out


def parse_json_object(body: bytes, where: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:  # a hostile registry's [[[[...: refuse, never crash the caller
        raise InvalidArgumentError(f"{where} is nested too deeply to be an OCI document") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{where} is not a JSON object")
    return data


def parse_descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise InvalidArgumentError(f"{where} is not a descriptor object")
    media_type = obj.get("mediaType")
    digest = obj.get("digest")
    size = obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidArgumentError(f"{where}.mediaType is missing or not a string")
    if not isinstance(digest, str):
        raise InvalidArgumentError(f"{where}.digest is missing or not a string")
    validate_digest(digest, f"{where}.digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgumentError(f"{where}.size must be a non-negative integer")
    artifact_type = obj.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise InvalidArgumentError(f"{where}.artifactType must be a string")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise InvalidArgumentError(f"{where}.annotations must map strings to strings")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise InvalidArgumentError(f"{where}.platform must be an object")
    return Descriptor(media_type, digest, size, artifact_type or None, dict(annotations), platform)


def parse_descriptor_list(data: dict[str, Any], key: str, where: str) -> list[Descriptor]:
    items = data.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise InvalidArgumentError(f"{where}.{key} must be a list")
    if len(items) > MAX_DESCRIPTORS:
        raise InvalidArgumentError(f"{where}.{key} has more than {MAX_DESCRIPTORS} entries")
    return [parse_descriptor(item, f"{where}.{key}[{i}]") for i, item in enumerate(items)]


def manifest_artifact_type(data: dict[str, Any]) -> str | None:
    """The artifact type of an image manifest as the referrers API defines it: artifactType, else
    config.mediaType (what pre-1.1 tools such as oras-py set)."""
    at = data.get("artifactType")
    if isinstance(at, str) and at:
        return at
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return None
