"""Attach a compatibility spec to an image, and list what is attached — what `oras attach` and
`oras discover` do, which NFD's client lacks and oras-py cannot do (no artifactType, wrong subject
digests from re-serialized JSON).

The artifact is an OCI image manifest: artifactType ARTIFACT_TYPE, config = the OCI empty
descriptor, one SPEC_MEDIA_TYPE layer, `subject` = the image descriptor exactly as the registry
reports it (digest, size and media type from its headers), and the created annotation. When the
registry does not answer the manifest PUT with `OCI-Subject` (no referrers API, e.g. distribution
2.8), we read-modify-write the referrers tag index `sha256-<hex>` as the OCI 1.1 spec's fallback
requires. That update is not atomic (the distribution API has no conditional PUT): two attaches
racing on one image can lose an entry, as with oras-go. The superseded index manifest is left in
place (deleting it needs delete rights most users lack).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.oci import mediatypes as mt
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.discovery import classify_referrers, open_repository, parse_created, resolve
from nodecompat.oci.errors import InvalidArgumentError
from nodecompat.oci.manifest import Descriptor, parse_descriptor_list
from nodecompat.oci.platform import parse_platform
from nodecompat.oci.reference import parse_reference
from nodecompat.oci.repository import digest_of
from nodecompat.oci.sessions import Budget

SPEC_TITLE = "image-compatibility.yaml"


@dataclass(frozen=True)
class AttachResult:
    artifact_digest: str
    subject_digest: str
    referrers_tag_updated: bool


@dataclass(frozen=True)
class ArtifactInfo:
    digest: str
    artifact_type: str | None
    created: str | None
    size: int


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_artifact_manifest(subject: Descriptor, spec_digest: str, spec_size: int, created: str) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "artifactType": mt.ARTIFACT_TYPE,
        "config": {"mediaType": mt.OCI_EMPTY, "digest": mt.EMPTY_DIGEST, "size": len(mt.EMPTY_JSON)},
        "layers": [{
            "mediaType": mt.SPEC_MEDIA_TYPE,
            "digest": spec_digest,
            "size": spec_size,
            "annotations": {mt.TITLE_ANNOTATION: SPEC_TITLE},
        }],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {mt.CREATED_ANNOTATION: created},
    }
    return json.dumps(manifest, separators=(",", ":"), sort_keys=False).encode("utf-8")


def attach_spec(
    reference: str,
    spec_text: str,
    *,
    plain_http: bool = False,
    auth: RegistryAuth | None = None,
    ca_file: str | None = None,
    created: str | None = None,
    timeout: float = 30.0,
    platform: str | None = None,
) -> AttachResult:
    """Push `spec_text` as a compatibility artifact referring to `reference` (or, with `platform`,
    to that platform's manifest of an index)."""
    ref = parse_reference(reference)
    plat = parse_platform(platform) if platform else None
    data = spec_text.encode("utf-8")
    if len(data) > MAX_SPEC_BYTES:
        raise InvalidArgumentError(f"spec is {len(data)} bytes, over the {MAX_SPEC_BYTES}-byte limit")
    stamp = created or now_rfc3339()
    if parse_created(stamp) is None:
        raise InvalidArgumentError(f"created {stamp!r} is not an RFC 3339 timestamp")
    budget = Budget(timeout)
    repo = open_repository(ref, plain_http=plain_http, auth=auth, ca_file=ca_file, budget=budget, pool=None)
    subject = resolve(repo, plat)
    spec_digest = digest_of(data)
    repo.push_blob(mt.EMPTY_JSON, mt.EMPTY_DIGEST)
    repo.push_blob(data, spec_digest)
    body = build_artifact_manifest(subject, spec_digest, len(data), stamp)
    artifact_digest = digest_of(body)
    headers = repo.put_manifest(artifact_digest, body, mt.OCI_MANIFEST)
    if headers.get("oci-subject"):
        return AttachResult(artifact_digest, subject.digest, False)
    entry = Descriptor(mt.OCI_MANIFEST, artifact_digest, len(body), mt.ARTIFACT_TYPE,
                       {mt.CREATED_ANNOTATION: stamp})
    index = repo.get_referrers_index(subject) or {
        "schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    existing = parse_descriptor_list(index, "manifests", f"referrers tag of {ref}")
    if any(d.digest == artifact_digest for d in existing):
        return AttachResult(artifact_digest, subject.digest, False)
    manifests = index.get("manifests") or []
    manifests.append(entry.to_json())
    index["manifests"] = manifests
    index.setdefault("schemaVersion", 2)
    index["mediaType"] = mt.OCI_INDEX
    index_body = json.dumps(index, separators=(",", ":")).encode("utf-8")
    repo.put_manifest(repo.referrers_tag(subject), index_body, mt.OCI_INDEX)
    return AttachResult(artifact_digest, subject.digest, True)


def list_artifacts(
    reference: str,
    *,
    plain_http: bool = False,
    auth: RegistryAuth | None = None,
    ca_file: str | None = None,
    timeout: float = 30.0,
    platform: str | None = None,
    artifact_type: str | None = mt.ARTIFACT_TYPE,
) -> list[ArtifactInfo]:
    """Artifacts referring to the image (of `artifact_type`; None = all), newest first."""
    ref = parse_reference(reference)
    plat = parse_platform(platform) if platform else None
    repo = open_repository(ref, plain_http=plain_http, auth=auth, ca_file=ca_file, budget=Budget(timeout),
                           pool=None)
    subject = resolve(repo, plat)
    referrers, _how = repo.referrers(subject, artifact_type)
    found = classify_referrers(repo, referrers, artifact_type, [])
    infos = [ArtifactInfo(d.digest, d.artifact_type, d.annotations.get(mt.CREATED_ANNOTATION), d.size)
             for d in found]
    oldest = datetime.min.replace(tzinfo=UTC)
    infos.sort(key=lambda a: (parse_created(a.created) or oldest, a.digest), reverse=True)
    return infos
