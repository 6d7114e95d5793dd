"""Registry authentication against real registries.

Basic: docker-registry with an htpasswd file (bcrypt, written with PyPI `bcrypt`), over HTTPS with a
test CA: nodecompat never sends credentials over plain HTTP (docs/security.md).
Bearer: distribution's htpasswd mode only challenges with Basic, so the Docker-style token flow
(401 + `WWW-Authenticate: Bearer realm=..,service=..,scope=..`, token fetched with basic
credentials) is served by support_registry.RegistryProxy(bearer_users=...) in front of the real
registry (serving HTTPS itself); storage and uploads stay real.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import support_registry as sr

from nodecompat.oci.attach import attach_spec
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.cache import SpecCache
from nodecompat.oci.discovery import fetch_compat_spec
from nodecompat.oci.errors import RegistryError

pytestmark = [pytest.mark.registry, sr.needs_registry]
auth_registry = sr.auth_registry
registry = sr.registry
repo_name = sr.repo_name
CREDS = f"{sr.USER}:{sr.PASSWORD}"
RECHECK = 0.2  # s: the docker config's recheck period in the rotation test (the product's RECHECK_SECONDS is 1 s)


@pytest.fixture
def ca(auth_registry: sr.RegistryProcess) -> str:
    assert auth_registry.tls is not None
    return str(auth_registry.tls[0])


@pytest.fixture
def no_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))


@pytest.fixture(scope="module")
def attached_image(auth_registry: sr.RegistryProcess, tmp_path_factory: pytest.TempPathFactory) -> sr.PushedImage:
    """An image with a spec attached in the auth registry, pushed once for the module: the tests only read it
    (each with its own credentials and docker config)."""
    assert auth_registry.tls is not None
    tmp = tmp_path_factory.mktemp("oci-auth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOCKER_CONFIG", str(tmp / "empty-docker-config"))
        img = sr.push_image(auth_registry.host, f"nc/t{uuid.uuid4().hex[:12]}", tmp, creds=CREDS)
        auth = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD)
        attach_spec(img.reference, sr.spec_yaml(note="auth"), ca_file=str(auth_registry.tls[0]), auth=auth)
    return img


@pytest.fixture
def attached(attached_image: sr.PushedImage, no_docker_config: None) -> sr.PushedImage:
    return attached_image


def test_username_password(attached: sr.PushedImage, ca: str) -> None:
    auth = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD)
    assert "auth" in fetch_compat_spec(attached.reference, ca_file=ca, auth=auth).text


def test_no_credentials_is_unauthenticated_with_a_hint(attached: sr.PushedImage, ca: str) -> None:
    with pytest.raises(RegistryError, match="needs credentials") as info:
        fetch_compat_spec(attached.reference, ca_file=ca, auth=RegistryAuth.from_sources())
    assert info.value.code == "UNAUTHENTICATED"


def test_wrong_credentials(attached: sr.PushedImage, ca: str) -> None:
    auth = RegistryAuth.from_sources(username=sr.USER, password="wrong")
    with pytest.raises(RegistryError, match="rejected the credentials") as info:
        fetch_compat_spec(attached.reference, ca_file=ca, auth=auth)
    assert info.value.code == "UNAUTHENTICATED"


@pytest.mark.parametrize("encoded", [True, False], ids=["auth-base64", "username-password"])
def test_docker_config(
    attached: sr.PushedImage,
    auth_registry: sr.RegistryProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    encoded: bool,
    ca: str,
) -> None:
    cfg = sr.docker_config(tmp_path / "docker", auth_registry.host, sr.USER, sr.PASSWORD, encoded=encoded)
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    got = fetch_compat_spec(attached.reference, ca_file=ca, auth=RegistryAuth.from_sources())
    assert "auth" in got.text
    # A docker config for another host does not leak to this one.
    other = sr.docker_config(tmp_path / "other", "other.example:5000", sr.USER, sr.PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(other))
    with pytest.raises(RegistryError) as info:
        fetch_compat_spec(attached.reference, ca_file=ca, auth=RegistryAuth.from_sources())
    assert info.value.code == "UNAUTHENTICATED"


def _rotate(secret_dir: Path, contents: str) -> None:
    """As the kubelet updates a mounted Secret: the new file is written aside, then swapped in atomically."""
    new = secret_dir / "config.json.new"
    new.write_text(contents)
    os.replace(new, secret_dir / "config.json")


def test_a_rotated_docker_config_is_followed_without_a_restart(
    attached: sr.PushedImage, auth_registry: sr.RegistryProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    ca: str,
) -> None:
    good = (sr.docker_config(tmp_path / "good", auth_registry.host, sr.USER, sr.PASSWORD) / "config.json").read_text()
    secret = sr.docker_config(tmp_path / "secret", auth_registry.host, sr.USER, "an-expired-password")
    monkeypatch.setenv("DOCKER_CONFIG", str(secret))
    # read once, as a daemon or webhook does at start; looked at again every 0.2 s (RECHECK_SECONDS is 1 s)
    auth = RegistryAuth.from_sources(recheck_seconds=RECHECK)
    with pytest.raises(RegistryError, match="rejected the credentials"):
        fetch_compat_spec(attached.reference, ca_file=ca, auth=auth)
    before = auth.identity()
    _rotate(secret, good)
    time.sleep(RECHECK + 0.2)
    assert "auth" in fetch_compat_spec(attached.reference, ca_file=ca, auth=auth).text
    assert auth.identity() != before  # caches keyed by it do not serve what the old credentials got
    # A rotation that does not load (a half-written or broken file) keeps the credentials read before.
    _rotate(secret, "{not json")
    time.sleep(RECHECK + 0.2)
    assert "auth" in fetch_compat_spec(attached.reference, ca_file=ca, auth=auth).text
    # A file that is gone is no credentials, as at start.
    (secret / "config.json").unlink()
    time.sleep(RECHECK + 0.2)
    with pytest.raises(RegistryError, match="needs credentials"):
        fetch_compat_spec(attached.reference, ca_file=ca, auth=auth)


def test_bearer_token_flow(registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    img = sr.push_image(registry.host, repo_name, tmp_path)
    attach_spec(img.reference, sr.spec_yaml(note="bearer"), plain_http=True)
    pki = sr.make_tls_files(tmp_path / "pki")
    ca = str(pki[0])
    with sr.RegistryProxy(
        registry.host, bearer_users={sr.USER: sr.PASSWORD}, static_tokens=frozenset({"pre-issued-token"}), tls=pki
    ) as proxy:
        ref = img.reference.replace(registry.host, proxy.host)
        good = RegistryAuth.from_sources(username=sr.USER, password=sr.PASSWORD, docker_config=False)
        cache = SpecCache()
        assert "bearer" in cache.fetch(ref, ca_file=ca, auth=good).text
        assert proxy.token_requests == 1  # one token for the whole fetch (HEAD, referrers, manifest, blob)
        cache.clear()
        cache.fetch(ref, ca_file=ca, auth=good)
        assert proxy.token_requests == 1  # the cache's session pool kept the token
        token = RegistryAuth.from_sources(token="pre-issued-token", docker_config=False)
        assert "bearer" in fetch_compat_spec(ref, ca_file=ca, auth=token).text
        assert proxy.token_requests == 1  # a given token is used as is, never exchanged
        bad = RegistryAuth.from_sources(username=sr.USER, password="nope", docker_config=False)
        with pytest.raises(RegistryError, match="refused the credentials") as info:
            fetch_compat_spec(ref, ca_file=ca, auth=bad)
        assert info.value.code == "UNAUTHENTICATED"
        with pytest.raises(RegistryError) as info:
            fetch_compat_spec(
                ref, ca_file=ca, auth=RegistryAuth.from_sources(token="forged", docker_config=False)
            )
        assert info.value.code == "UNAUTHENTICATED"


tls_registry = sr.tls_registry


def test_https_with_ca_file(tls_registry: sr.RegistryProcess, repo_name: str, tmp_path: Path) -> None:
    """HTTPS is the default; a private CA is trusted only when given (ca_file or RegistryAuth.ca_file)."""
    assert tls_registry.tls is not None
    ca = str(tls_registry.tls[0])
    img = sr.push_image(tls_registry.host, repo_name, tmp_path)  # skopeo: --dest-tls-verify=false
    attach_spec(img.reference, sr.spec_yaml(note="tls"), ca_file=ca)
    assert "tls" in fetch_compat_spec(img.reference, ca_file=ca).text
    with_ca = RegistryAuth.from_sources(docker_config=False, ca_file=ca)
    assert "tls" in fetch_compat_spec(img.reference, auth=with_ca).text
    with pytest.raises(RegistryError, match="--ca-file") as info:
        fetch_compat_spec(img.reference, timeout=10)
    assert info.value.code == "UNAVAILABLE"
    with pytest.raises(RegistryError, match="drop --plain-http") as info:
        fetch_compat_spec(img.reference, plain_http=True, timeout=10)  # HTTP to an HTTPS port
    assert info.value.code == "UNAVAILABLE"
