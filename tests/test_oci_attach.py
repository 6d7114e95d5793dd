"""attach_spec and list_artifacts against a real registry: the pushed manifest's exact shape, the
referrers tag index read-modify-write on a registry without the referrers API, and listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import support_registry as sr

from nodecompat.oci import mediatypes as mt
from nodecompat.oci.attach import attach_spec, list_artifacts
from nodecompat.oci.errors import RegistryError

pytestmark = [pytest.mark.registry, sr.needs_registry]
registry = sr.registry
repo_name = sr.repo_name


def _get(host: str, repo: str, target: str, accept: str) -> requests.Response:
    resp = requests.get(f"http://{host}/v2/{repo}/manifests/{target}", headers={"Accept": accept}, timeout=10)
    resp.raise_for_status()
    return resp


def test_attached_manifest_is_what_oras_attach_pushes(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    spec = sr.spec_yaml(note="shape")
    result = attach_spec(img.reference, spec, plain_http=True, created="2025-03-04T05:06:07Z")
    body = _get(registry.host, repo_name, result.artifact_digest, mt.OCI_MANIFEST).content
    assert sr.sha256(body) == result.artifact_digest
    manifest = json.loads(body)
    assert manifest["mediaType"] == mt.OCI_MANIFEST
    assert manifest["artifactType"] == mt.ARTIFACT_TYPE
    assert manifest["config"] == {"mediaType": mt.OCI_EMPTY, "digest": mt.EMPTY_DIGEST, "size": 2}
    assert manifest["subject"] == sr.subject_of(img)
    assert manifest["annotations"] == {mt.CREATED_ANNOTATION: "2025-03-04T05:06:07Z"}
    [layer] = manifest["layers"]
    assert layer["mediaType"] == mt.SPEC_MEDIA_TYPE
    assert layer["digest"] == sr.sha256(spec.encode()) and layer["size"] == len(spec.encode())
    blob = requests.get(f"http://{registry.host}/v2/{repo_name}/blobs/{mt.EMPTY_DIGEST}", timeout=10)
    assert blob.content == b"{}"


def test_referrers_tag_index_is_read_modified_written(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    tag = img.digest.replace(":", "-")
    first = attach_spec(
        img.reference, sr.spec_yaml(note="a"), plain_http=True, created="2025-01-01T00:00:00Z"
    )
    second = attach_spec(
        img.reference, sr.spec_yaml(note="b"), plain_http=True, created="2025-02-01T00:00:00Z"
    )
    assert first.referrers_tag_updated and second.referrers_tag_updated
    index = _get(registry.host, repo_name, tag, mt.OCI_INDEX).json()
    assert index["mediaType"] == mt.OCI_INDEX
    assert [m["digest"] for m in index["manifests"]] == [first.artifact_digest, second.artifact_digest]
    assert all(m["artifactType"] == mt.ARTIFACT_TYPE for m in index["manifests"])
    assert index["manifests"][1]["annotations"] == {mt.CREATED_ANNOTATION: "2025-02-01T00:00:00Z"}
    # Attaching the very same artifact again changes nothing.
    again = attach_spec(
        img.reference, sr.spec_yaml(note="b"), plain_http=True, created="2025-02-01T00:00:00Z"
    )
    assert again.artifact_digest == second.artifact_digest and not again.referrers_tag_updated
    assert len(_get(registry.host, repo_name, tag, mt.OCI_INDEX).json()["manifests"]) == 2


def test_list_artifacts_newest_first(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path, platforms=["linux/amd64", "linux/arm64"])
    assert list_artifacts(img.reference, plain_http=True) == []
    old = attach_spec(
        img.reference, sr.spec_yaml(note="old"), plain_http=True, created="2024-01-01T00:00:00Z"
    )
    new = attach_spec(
        img.reference, sr.spec_yaml(note="new"), plain_http=True, created="2025-01-01T00:00:00Z"
    )
    arm = attach_spec(img.reference, sr.spec_yaml(note="arm"), plain_http=True, platform="linux/arm64")
    listed = list_artifacts(img.reference, plain_http=True)
    assert [a.digest for a in listed] == [new.artifact_digest, old.artifact_digest]
    assert listed[0].created == "2025-01-01T00:00:00Z" and listed[0].artifact_type == mt.ARTIFACT_TYPE
    assert listed[0].size > 0
    assert [a.digest for a in list_artifacts(img.reference, plain_http=True, platform="linux/arm64")] == [
        arm.artifact_digest
    ]
    assert arm.subject_digest == img.platforms["linux/arm64"]


def test_attach_refuses_bad_input(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as info:
        attach_spec(f"{registry.host}/{repo_name}:missing", sr.spec_yaml(), plain_http=True)
    assert info.value.code == "NOT_FOUND"
    img = sr.push_image(registry.host, repo_name, tmp_path)
    with pytest.raises(RegistryError, match="RFC 3339") as info:
        attach_spec(img.reference, sr.spec_yaml(), plain_http=True, created="last tuesday")
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(RegistryError, match="limit"):
        attach_spec(img.reference, "x" * (2 << 20), plain_http=True)
