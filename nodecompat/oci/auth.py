"""Registry credentials: explicit username/password or token, else the docker config file.

NFD's client is anonymous unless given flags, and ignores docker config; we also read the `auths`
section of `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`) so a node that already has
`docker login` credentials works. Credential helpers (`credsStore`/`credHelpers`) are not run: they
execute external programs, which a daemon should not do implicitly.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodecompat.oci.errors import InvalidArgumentError

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class RegistryAuth:
    """Where credentials come from. Explicit ones apply to every host; docker-config ones per host."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    docker_auths: dict[str, Credential] = field(default_factory=dict, repr=False)
    ca_file: str | None = None

    @classmethod
    def from_sources(
        cls,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        docker_config: bool | str | os.PathLike[str] = True,
        ca_file: str | None = None,
    ) -> RegistryAuth:
        """Explicit values; docker_config: True = the default file, a path = that file, False = none."""
        if token and (username or password):
            raise InvalidArgumentError("give either a registry token or a username/password, not both")
        if bool(username) != bool(password):
            raise InvalidArgumentError(
                "registry username and password must both be given (NFD would silently go anonymous)"
            )
        auths: dict[str, Credential] = {}
        if docker_config:
            path = default_docker_config_path() if docker_config is True else Path(docker_config)
            auths = load_docker_config(path)
        return cls(username or None, password or None, token or None, auths, ca_file)

    def credential_for(self, host: str) -> Credential | None:
        """Basic credentials for `host` (with port), explicit ones first."""
        if self.username and self.password:
            return Credential(self.username, self.password)
        if host in self.docker_auths:
            return self.docker_auths[host]
        if host in _HUB_KEYS:
            for key in _HUB_KEYS:
                if key in self.docker_auths:
                    return self.docker_auths[key]
        return None

    def identity(self) -> str:
        """A non-secret key telling auth configurations apart (for caches)."""
        kind = "token" if self.token else "basic" if self.username else "anon"
        digest = hash((self.username, self.password, self.token, tuple(sorted(self.docker_auths))))
        return f"{kind}:{digest:x}"


def default_docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _normalize_host(key: str) -> str:
    if key in _HUB_KEYS:
        return key
    host = key.split("://", 1)[-1]
    return host.split("/", 1)[0]


def load_docker_config(path: Path) -> dict[str, Credential]:
    """Read `auths` of a docker config file; a missing file is no credentials, a broken one an error."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read docker config {path}: {exc.strerror}") from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        raise InvalidArgumentError(f"docker config {path} is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        data: Any = json.loads(raw)
    except RecursionError:
        raise InvalidArgumentError(f"docker config {path} is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"docker config {path} is not valid JSON: {exc}") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if auths is None:
        return {}
    if not isinstance(auths, dict):
        raise InvalidArgumentError(f"docker config {path}: 'auths' must be an object")
    out: dict[str, Credential] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise InvalidArgumentError(f"docker config {path}: auths[{key!r}] must be an object")
        cred = _entry_credential(entry, f"{path}: auths[{key!r}]")
        if cred is not None:
            out[_normalize_host(str(key))] = cred
    return out


def _entry_credential(entry: dict[str, Any], where: str) -> Credential | None:
    encoded = entry.get("auth")
    if encoded:
        if not isinstance(encoded, str):
            raise InvalidArgumentError(f"docker config {where}.auth must be a string")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"docker config {where}.auth is not base64 of user:password") from exc
        user, sep, password = decoded.partition(":")
        if not sep or not user:
            raise InvalidArgumentError(f"docker config {where}.auth does not decode to user:password")
        return Credential(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credential(name, secret)
    return None
