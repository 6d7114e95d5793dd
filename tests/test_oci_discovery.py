"""fetch_compat_spec and SpecCache against a real registry (Debian's docker-registry 2.8.2).

Images are built as OCI layouts and pushed with skopeo; artifacts are attached with attach_spec
(which, on this registry, maintains the `sha256-<hex>` referrers tag index) or hand-made with
push_raw_artifact for cases our attach would never produce. The OCI 1.1 referrers API path uses
support_registry.RegistryProxy (see its docstring: distribution 2.8.2 lacks that API).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import support_registry as sr

from nodecompat.oci import mediatypes as mt
from nodecompat.oci.attach import attach_spec
from nodecompat.oci.cache import SpecCache
from nodecompat.oci.discovery import fetch_compat_spec
from nodecompat.oci.errors import RegistryError

pytestmark = [pytest.mark.registry, sr.needs_registry]
registry = sr.registry
repo_name = sr.repo_name


def _code(exc: pytest.ExceptionInfo[RegistryError]) -> str:
    return exc.value.code


def test_tag_and_digest_references(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    spec = sr.spec_yaml(note="tag")
    attached = attach_spec(img.reference, spec, plain_http=True, created="2025-05-01T00:00:00Z")
    assert attached.subject_digest == img.digest
    assert attached.referrers_tag_updated  # distribution 2.8 has no referrers API
    for ref in (img.reference, img.by_digest()):
        got = fetch_compat_spec(ref, plain_http=True)
        assert got.text == spec
        assert got.image_digest == img.digest
        assert got.artifact_digest == attached.artifact_digest
        assert got.created == "2025-05-01T00:00:00Z"
        assert got.warnings == []


def test_multi_platform_index_has_no_fallback(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path, platforms=["linux/amd64", "linux/arm64"])
    index_spec = sr.spec_yaml(note="index")
    attach_spec(img.reference, index_spec, plain_http=True)
    # Without --platform the index itself is the subject.
    assert fetch_compat_spec(img.reference, plain_http=True).text == index_spec
    # With --platform the platform manifest is, and (as in NFD) the index's artifact is not used.
    with pytest.raises(RegistryError) as info:
        fetch_compat_spec(img.reference, plain_http=True, platform="linux/arm64")
    assert _code(info) == "NOT_FOUND"
    assert "linux/arm64" in str(info.value) and img.platforms["linux/arm64"] in str(info.value)
    arm_spec = sr.spec_yaml(note="arm64")
    attach_spec(img.reference, arm_spec, plain_http=True, platform="linux/arm64")
    got = fetch_compat_spec(img.reference, plain_http=True, platform="linux/arm64")
    assert got.text == arm_spec and got.image_digest == img.platforms["linux/arm64"]
    assert fetch_compat_spec(img.reference, plain_http=True).text == index_spec
    with pytest.raises(RegistryError, match="no manifest for platform linux/s390x") as info:
        fetch_compat_spec(img.reference, plain_http=True, platform="linux/s390x")
    assert _code(info) == "NOT_FOUND"


def test_single_manifest_platform_is_checked_against_its_config(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)  # linux/amd64
    attach_spec(img.reference, sr.spec_yaml(), plain_http=True)
    assert (
        fetch_compat_spec(img.reference, plain_http=True, platform="linux/amd64").image_digest == img.digest
    )
    with pytest.raises(RegistryError, match="not built for platform linux/arm64") as info:
        fetch_compat_spec(img.reference, plain_http=True, platform="linux/arm64")
    assert _code(info) == "NOT_FOUND"


def test_newest_artifact_wins(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    newer = attach_spec(
        img.reference, sr.spec_yaml(note="new"), plain_http=True, created="2025-06-01T00:00:00Z"
    )
    attach_spec(img.reference, sr.spec_yaml(note="old"), plain_http=True, created="2025-01-01T00:00:00Z")
    sr.push_raw_artifact(
        registry.host,
        repo_name,
        sr.subject_of(img),
        layers=[b"typo: newest but ignored\n"],
        annotations={mt.CREATED_ANNOTATION_TYPO: "2030-01-01T00:00:00Z"},
    )
    got = fetch_compat_spec(img.reference, plain_http=True)
    assert got.artifact_digest == newer.artifact_digest
    assert "test spec new" in got.text
    assert any("3 compatibility artifacts" in w for w in got.warnings)
    assert any(mt.CREATED_ANNOTATION_TYPO in w for w in got.warnings)


def test_missing_image_and_missing_artifact(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/{repo_name}:nope"
    with pytest.raises(RegistryError) as info:
        fetch_compat_spec(ref, plain_http=True)
    assert _code(info) == "NOT_FOUND" and ref in str(info.value)
    img = sr.push_image(registry.host, repo_name, tmp_path)
    with pytest.raises(RegistryError, match="no compatibility artifact") as info:
        fetch_compat_spec(img.reference, plain_http=True)
    assert _code(info) == "NOT_FOUND" and img.reference in str(info.value)


def test_stopped_registry_is_unavailable(tmp_path: Path) -> None:
    reg = sr.RegistryProcess(tmp_path / "reg").start()
    img = sr.push_image(reg.host, "nc/gone", tmp_path)
    reg.stop()
    with pytest.raises(RegistryError, match="unreachable") as info:
        fetch_compat_spec(img.reference, plain_http=True, timeout=10)
    assert _code(info) == "UNAVAILABLE"


def test_https_to_plain_http_registry_says_what_to_do(registry: sr.RegistryProcess, repo_name: str) -> None:
    with pytest.raises(RegistryError, match="--plain-http") as info:
        fetch_compat_spec(f"{registry.host}/{repo_name}:v1", timeout=10)
    assert _code(info) == "UNAVAILABLE"


def test_oversized_artifact_is_refused_before_download(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    big = sr.spec_yaml() + "# " + "x" * 5000 + "\n"
    attach_spec(img.reference, big, plain_http=True)
    with pytest.raises(RegistryError, match="over the 4096-byte limit") as info:
        fetch_compat_spec(img.reference, plain_http=True, max_bytes=4096)
    assert _code(info) == "INVALID_ARGUMENT"
    assert fetch_compat_spec(img.reference, plain_http=True).text == big


def test_layer_larger_than_its_descriptor_is_cut_off(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    sr.push_raw_artifact(
        registry.host, repo_name, sr.subject_of(img), layers=[b"a: 1\n" * 100], size_override=10
    )
    with pytest.raises(RegistryError) as info:
        fetch_compat_spec(img.reference, plain_http=True)
    assert _code(info) == "INVALID_ARGUMENT"
    assert "limit" in str(info.value) or "mismatch" in str(info.value)


def test_digest_mismatch_is_detected(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(), plain_http=True)
    with sr.RegistryProxy(registry.host, tamper_blobs=True) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        with pytest.raises(RegistryError, match="digest mismatch") as info:
            fetch_compat_spec(ref, plain_http=True)
    assert _code(info) == "INVALID_ARGUMENT"


def test_slow_registry_hits_the_overall_budget(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    with sr.RegistryProxy(registry.host, delay=5.0) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        start = time.monotonic()
        with pytest.raises(RegistryError, match="budget") as info:
            fetch_compat_spec(ref, plain_http=True, timeout=0.5)
        elapsed = time.monotonic() - start
    assert _code(info) == "DEADLINE_EXCEEDED"
    assert elapsed < 4.0  # gave up on its 0.5 s budget instead of waiting for the 5 s answer


def test_referrers_api_path(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    with sr.RegistryProxy(registry.host, referrers=True) as proxy:
        img = sr.push_image(proxy.host, repo_name, tmp_path)
        spec = sr.spec_yaml(note="api")
        attached = attach_spec(img.reference, spec, plain_http=True)
        assert not attached.referrers_tag_updated  # the OCI-Subject header told us the registry tracks it
        got = fetch_compat_spec(img.reference, plain_http=True)
        assert got.text == spec and got.artifact_digest == attached.artifact_digest
        assert proxy.referrers_calls >= 1
    # No tag-schema index was written: straight to the registry, nothing is found.
    with pytest.raises(RegistryError, match="no compatibility artifact"):
        fetch_compat_spec(img.reference.replace(proxy.host, registry.host), plain_http=True)


def test_oras_py_artifact_is_found_via_config_media_type(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """oras-py cannot set artifactType. It can set the config media type (`manifest_config`), which
    is how pre-OCI-1.1 tools typed artifacts and what both the referrers API and our discovery fall
    back to. oras-py never writes the referrers tag index, so only a registry with the referrers API
    (here the proxy) lists it; on plain distribution 2.8 such an artifact stays invisible to every
    client, NFD's included."""
    import oras.client
    import oras.oci

    with sr.RegistryProxy(registry.host, referrers=True) as proxy:
        img = sr.push_image(proxy.host, repo_name, tmp_path)
        subject = sr.subject_of(img)
        work = tmp_path / "oras"
        work.mkdir()
        (work / "spec.yaml").write_text(sr.spec_yaml(note="oras-py"))
        (work / "config.json").write_text("{}")
        monkeypatch.chdir(work)
        client = oras.client.OrasClient(hostname=proxy.host, insecure=True)
        client.push(
            target=f"{proxy.host}/{repo_name}:compat",
            files=[f"spec.yaml:{mt.SPEC_MEDIA_TYPE}"],
            manifest_config=f"config.json:{mt.ARTIFACT_TYPE}",
            manifest_annotations={mt.CREATED_ANNOTATION: "2025-02-02T00:00:00Z"},
            subject=oras.oci.Subject(
                mediaType=subject["mediaType"], digest=subject["digest"], size=subject["size"]
            ),
        )
        got = fetch_compat_spec(img.reference, plain_http=True)
        assert "oras-py" in got.text and got.created == "2025-02-02T00:00:00Z"


def test_tag_index_entry_without_artifact_type(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    sr.push_raw_artifact(
        registry.host,
        repo_name,
        sr.subject_of(img),
        layers=[(b"a: 1\n", "text/yaml")],
        artifact_type=None,
        config_media_type=mt.ARTIFACT_TYPE,
    )
    sr.push_raw_artifact(
        registry.host,
        repo_name,
        sr.subject_of(img),
        layers=[b"other\n"],
        artifact_type=None,
        config_media_type="application/vnd.other+json",
        annotations={mt.CREATED_ANNOTATION: "2031-01-01T00:00:00Z"},
    )
    got = fetch_compat_spec(img.reference, plain_http=True)
    assert got.text == "a: 1\n"
    assert any("text/yaml" in w for w in got.warnings)  # layer media type is not SPEC_MEDIA_TYPE


def test_artifact_without_layers_is_invalid(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    sr.push_raw_artifact(registry.host, repo_name, sr.subject_of(img), layers=[])
    with pytest.raises(RegistryError, match="compatibility layer not found") as info:
        fetch_compat_spec(img.reference, plain_http=True)
    assert _code(info) == "INVALID_ARGUMENT"


def test_broken_referrers_tag_is_a_clear_error_not_a_crash(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    """NFD panics when the referrers lookup fails; we name the failure."""
    img = sr.push_image(registry.host, repo_name, tmp_path)
    # Put a plain image manifest where the referrers index should be.
    other = sr.push_image(registry.host, repo_name, tmp_path, tag="other")
    sr.subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--preserve-digests",
            f"docker://{other.reference}",
            f"docker://{registry.host}/{repo_name}:{img.digest.replace(':', '-')}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with pytest.raises(RegistryError, match=r"referrers lookup .* failed: .*not an index") as info:
        fetch_compat_spec(img.reference, plain_http=True)
    assert _code(info) == "INVALID_ARGUMENT"


def test_cache_hits_and_misses(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="one"), plain_http=True, created="2025-01-01T00:00:00Z")
    cache = SpecCache(tag_ttl=60, spec_ttl=600)
    first = cache.fetch(img.reference, plain_http=True)
    second = cache.fetch(img.reference, plain_http=True)
    assert first == second
    stats = cache.stats()
    assert (stats.tag_misses, stats.tag_hits, stats.spec_misses, stats.spec_hits) == (1, 1, 1, 1)
    # A newer artifact is not seen while the tag entry lives (tag_ttl is the staleness bound) ...
    attach_spec(img.reference, sr.spec_yaml(note="two"), plain_http=True, created="2025-02-01T00:00:00Z")
    assert "test spec one" in cache.fetch(img.reference, plain_http=True).text
    # ... and is seen by a cache that does not keep tags, which still reuses specs by digest.
    fresh = SpecCache(tag_ttl=0)
    assert "test spec two" in fresh.fetch(img.reference, plain_http=True).text
    assert "test spec two" in fresh.fetch(img.reference, plain_http=True).text
    stats = fresh.stats()
    assert (stats.tag_misses, stats.tag_hits, stats.spec_misses, stats.spec_hits) == (2, 0, 1, 1)
    # Different platform = different entry.
    with pytest.raises(RegistryError):
        cache.fetch(img.reference, plain_http=True, platform="linux/arm64")
    assert cache.stats().tag_misses == 2


def test_cache_is_thread_safe(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    spec = sr.spec_yaml(note="threads")
    attach_spec(img.reference, spec, plain_http=True)
    cache = SpecCache()
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                results.append(cache.fetch(img.reference, plain_http=True).text)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert results == [spec] * 30
    stats = cache.stats()
    assert stats.tag_hits + stats.tag_misses == 30
    assert stats.spec_hits + stats.spec_misses == 30
    assert stats.tag_entries == 1 and stats.spec_entries == 1


def test_index_without_annotations_each_document_fetched_once(
    registry: sr.RegistryProcess, repo_name: str, tmp_path: Path
) -> None:
    """Listings that carry artifactType but no annotations: one candidate is used without fetching
    its manifest twice; among several, dates come from their manifests."""
    img = sr.push_image(registry.host, repo_name, tmp_path)
    subject = sr.subject_of(img)
    no_ann = {"annotations": None}
    older = sr.push_raw_artifact(
        registry.host,
        repo_name,
        subject,
        layers=[b"older\n"],
        index_entry=no_ann,
        annotations={mt.CREATED_ANNOTATION: "2025-01-01T00:00:00Z"},
    )
    with sr.RegistryProxy(registry.host) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        got = fetch_compat_spec(ref, plain_http=True)
        assert got.text == "older\n" and got.created == "2025-01-01T00:00:00Z"
        assert proxy.seen.count(f"GET /v2/{repo_name}/manifests/{older}") == 1
        newer = sr.push_raw_artifact(
            registry.host,
            repo_name,
            subject,
            layers=[b"newer\n"],
            index_entry=no_ann,
            annotations={mt.CREATED_ANNOTATION: "2026-01-01T00:00:00Z"},
        )
        proxy.seen.clear()
        got = fetch_compat_spec(ref, plain_http=True)
        assert got.text == "newer\n" and got.artifact_digest == newer
        for digest in (older, newer):
            assert proxy.seen.count(f"GET /v2/{repo_name}/manifests/{digest}") == 1
