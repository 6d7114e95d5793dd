"""OCI client pieces that need no registry: references, platforms, auth sources, challenges,
descriptor parsing of hostile JSON, and the newest-artifact rule."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from nodecompat.oci import mediatypes as mt
from nodecompat.oci.auth import RegistryAuth, load_docker_config
from nodecompat.oci.discovery import newest, parse_created
from nodecompat.oci.errors import INVALID_ARGUMENT, RegistryError
from nodecompat.oci.manifest import Descriptor, parse_descriptor, parse_descriptor_list, parse_json_object
from nodecompat.oci.platform import Platform, host_goarch, parse_platform
from nodecompat.oci.reference import Reference, parse_reference
from nodecompat.oci.sessions import Budget, parse_challenge

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("reg.example.com/app:v1", Reference("reg.example.com", "app", "v1")),
        ("127.0.0.1:5000/a/b/c:1.0-rc_1", Reference("127.0.0.1:5000", "a/b/c", "1.0-rc_1")),
        ("localhost:5000/app", Reference("localhost:5000", "app", "latest")),
        (f"reg.io/app@{D1}", Reference("reg.io", "app", None, D1)),
        (f"reg.io/app:v1@{D1}", Reference("reg.io", "app", None, D1)),
        ("docker.io/ubuntu:22.04", Reference("docker.io", "library/ubuntu", "22.04")),
    ],
)
def test_parse_reference_accepts(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_reference_target_and_api_host() -> None:
    ref = parse_reference("docker.io/nvidia/cuda:12")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.target == "12"
    assert str(ref) == "docker.io/nvidia/cuda:12"
    assert parse_reference(f"r.io/x@{D1}").target == D1


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("ubuntu:22.04", "must name the registry host"),
        ("reg.io/App:v1", "invalid repository"),
        ("reg.io/app:-bad", "invalid tag"),
        ("reg.io/app@sha256:abc", "invalid digest"),
        ("reg.io/app@md5:" + "0" * 32, "invalid digest"),
        ("reg_io!/app:v1", "invalid registry host"),
        ("reg.io/a//b:v1", "invalid repository"),
    ],
)
def test_parse_reference_refuses(text: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_reference(text)
    assert info.value.code == INVALID_ARGUMENT
    assert fragment in str(info.value)


def test_parse_platform_follows_nfd() -> None:
    assert parse_platform("linux") == Platform("linux", host_goarch())
    assert parse_platform("linux/arm64/v8:10.0") == Platform("linux", "arm64", "v8", "10.0")
    assert parse_platform("windows/amd64:10.0.17763") == Platform("windows", "amd64", "", "10.0.17763")
    for bad, why in [
        ("linux/a/b/c", "expected os"),
        ("/amd64", "os cannot be empty"),
        ("linux/", "architecture cannot be empty"),
        ("", "empty"),
    ]:
        with pytest.raises(RegistryError, match=why) as info:
            parse_platform(bad)
        assert info.value.code == INVALID_ARGUMENT


def test_platform_matching_like_oras() -> None:
    want = Platform("linux", "arm64")
    assert want.matches({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert not want.matches({"os": "linux", "architecture": "amd64"})
    assert not want.matches(None)
    assert not Platform("linux", "arm64", "v7").matches(
        {"os": "linux", "architecture": "arm64", "variant": "v8"}
    )
    assert not Platform("windows", "amd64", "", "10.1").matches(
        {"os": "windows", "architecture": "amd64", "os.version": "10.0"}
    )


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_budget_refuses_non_positive_timeout() -> None:
    with pytest.raises(RegistryError) as info:
        Budget(0)
    assert info.value.code == "DEADLINE_EXCEEDED"


def test_created_parsing_and_newest_rule() -> None:
    assert parse_created("2025-01-02T03:04:05Z") is not None
    assert parse_created("2025-01-02T03:04:05.123+02:00") is not None
    assert parse_created("yesterday") is None
    assert parse_created("2025-01-02T03:04:05") is None  # no offset: not RFC 3339
    old = Descriptor(
        mt.OCI_MANIFEST, D2, 1, mt.ARTIFACT_TYPE, {mt.CREATED_ANNOTATION: "2024-01-01T00:00:00Z"}
    )
    new = Descriptor(
        mt.OCI_MANIFEST, D1, 1, mt.ARTIFACT_TYPE, {mt.CREATED_ANNOTATION: "2025-01-01T00:00:00Z"}
    )
    typo = Descriptor(
        mt.OCI_MANIFEST,
        "sha256:" + "f" * 64,
        1,
        mt.ARTIFACT_TYPE,
        {mt.CREATED_ANNOTATION_TYPO: "2030-01-01T00:00:00Z"},
    )
    warnings: list[str] = []
    assert newest([old, typo, new], warnings) == new
    assert any(mt.CREATED_ANNOTATION_TYPO in w for w in warnings)
    # Equal (here: missing) timestamps: the greatest digest wins, whatever the input order.
    a = Descriptor(mt.OCI_MANIFEST, D1, 1)
    b = Descriptor(mt.OCI_MANIFEST, D2, 1)
    assert newest([a, b], []) == b
    assert newest([b, a], []) == b


def test_docker_config_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example.com/v1/": {
                        "auth": base64.b64encode(b"alice:pw:with:colons").decode()
                    },
                    "127.0.0.1:5000": {"username": "bob", "password": "pw2"},
                    "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:hubpw").decode()},
                    "empty.example": {},
                }
            }
        )
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    auth = RegistryAuth.from_sources()
    cred = auth.credential_for("reg.example.com")
    assert cred is not None and (cred.username, cred.password) == ("alice", "pw:with:colons")
    cred = auth.credential_for("127.0.0.1:5000")
    assert cred is not None and cred.username == "bob"
    cred = auth.credential_for("registry-1.docker.io")
    assert cred is not None and cred.username == "hub"
    assert auth.credential_for("empty.example") is None
    assert auth.credential_for("other.example") is None
    # Explicit credentials win for every host; secrets stay out of repr.
    explicit = RegistryAuth.from_sources(username="u", password="p", docker_config=False)
    cred = explicit.credential_for("anything:1")
    assert cred is not None and cred.username == "u"
    assert "p'" not in repr(explicit) and "pw2" not in repr(auth)


def test_docker_config_missing_is_empty_broken_is_error(tmp_path: Path) -> None:
    assert load_docker_config(tmp_path / "nope.json") == {}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON") as info:
        load_docker_config(bad)
    assert info.value.code == INVALID_ARGUMENT
    bad.write_text(json.dumps({"auths": {"h": {"auth": "!!!"}}}))
    with pytest.raises(RegistryError, match="base64"):
        load_docker_config(bad)


def test_from_sources_refuses_half_credentials() -> None:
    with pytest.raises(RegistryError, match="both"):
        RegistryAuth.from_sources(username="u", docker_config=False)
    with pytest.raises(RegistryError, match="not both"):
        RegistryAuth.from_sources(username="u", password="p", token="t", docker_config=False)


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([], "not a descriptor"),
        ({"mediaType": "x", "digest": D1}, "size"),
        ({"mediaType": "x", "digest": D1, "size": -1}, "size"),
        ({"mediaType": "x", "digest": D1, "size": True}, "size"),
        ({"mediaType": "x", "digest": "sha256:zz", "size": 1}, "digest"),
        ({"mediaType": 5, "digest": D1, "size": 1}, "mediaType"),
        ({"mediaType": "x", "digest": D1, "size": 1, "annotations": {"a": 1}}, "annotations"),
    ],
)
def test_hostile_descriptors_are_located_errors(obj: object, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_descriptor(obj, "index.manifests[3]")
    assert info.value.code == INVALID_ARGUMENT
    assert "index.manifests[3]" in str(info.value) and fragment in str(info.value)


def test_hostile_json_documents() -> None:
    with pytest.raises(RegistryError, match="not valid JSON"):
        parse_json_object(b"\xff\xfe", "manifest")
    with pytest.raises(RegistryError, match="not a JSON object"):
        parse_json_object(b"[1]", "manifest")
    with pytest.raises(RegistryError, match="must be a list"):
        parse_descriptor_list({"manifests": {}}, "manifests", "index")
    assert parse_descriptor_list({}, "manifests", "index") == []
