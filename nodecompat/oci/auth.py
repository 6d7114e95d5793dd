"""Registry credentials: explicit username/password or token, else the docker config file.

NFD's client is anonymous unless given flags, and ignores docker config; we also read the `auths`
section of `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`) so a node that already has
`docker login` credentials works. Credential helpers (`credsStore`/`credHelpers`) are not run: they
execute external programs, which a daemon should not do implicitly.

The docker config file is re-read when it changes (DockerConfigFile: its inode, size or mtime, looked at
no more than once per RECHECK_SECONDS), so a long-running daemon or webhook follows a rotated Kubernetes
pull secret (a mounted Secret is swapped atomically through a symlink) without a restart.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodecompat.oci.errors import InvalidArgumentError

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_MAX_CONFIG_BYTES = 1 << 20
RECHECK_SECONDS = 1.0  # how often (at most) a docker config file is looked at again for a change

log = logging.getLogger(__name__)


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
    docker_config_file: DockerConfigFile | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_sources(
        cls,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        docker_config: bool | str | os.PathLike[str] = True,
        ca_file: str | None = None,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> RegistryAuth:
        """Explicit values; docker_config: True = the default file, a path = that file, False = none;
        recheck_seconds: how often (at most) that file is looked at again for a change (DockerConfigFile)."""
        if token and (username or password):
            raise InvalidArgumentError("give either a registry token or a username/password, not both")
        if bool(username) != bool(password):
            raise InvalidArgumentError(
                "registry username and password must both be given (NFD would silently go anonymous)"
            )
        watched = None
        if docker_config:
            path = default_docker_config_path() if docker_config is True else Path(docker_config)
            watched = DockerConfigFile(path, recheck_seconds)  # read now: a broken file is an error at start
        return cls(username or None, password or None, token or None, {}, ca_file, watched)

    def current_docker_auths(self) -> dict[str, Credential]:
        """The docker config's credentials by host as of now (the file re-read if it changed), else the
        docker_auths given."""
        return self.docker_config_file.auths() if self.docker_config_file is not None else self.docker_auths

    def credential_for(self, host: str) -> Credential | None:
        """Basic credentials for `host` (with port), explicit ones first."""
        if self.username and self.password:
            return Credential(self.username, self.password)
        auths = self.current_docker_auths()
        if host in auths:
            return auths[host]
        if host in _HUB_KEYS:
            for key in _HUB_KEYS:
                if key in auths:
                    return auths[key]
        return None

    def identity(self) -> str:
        """A non-secret key telling auth configurations apart (for caches); changes when the docker config's
        credentials do."""
        kind = "token" if self.token else "basic" if self.username else "anon"
        digest = hash((self.username, self.password, self.token, tuple(sorted(self.current_docker_auths().items()))))
        return f"{kind}:{digest:x}"


class DockerConfigFile:
    """A docker config file's `auths`, re-read when the file changes: its (device, inode, size, mtime) is
    looked at no more than once per `recheck_seconds` (RECHECK_SECONDS), on use. A change that does not load
    (broken JSON, a half-written file) keeps the credentials read before, with a warning — a rotation in
    progress must not drop every credential; a file that is gone means no credentials, as at start."""

    def __init__(self, path: Path, recheck_seconds: float = RECHECK_SECONDS) -> None:
        """Reads the file now; InvalidArgumentError when it is broken (module load_docker_config).
        recheck_seconds >= 0: the least time between two looks at the file (tests pass a shorter one)."""
        if not recheck_seconds >= 0:
            raise ValueError(f"recheck_seconds must be >= 0, not {recheck_seconds!r}")
        self.path = path
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._stamp = _stamp(path)
        self._auths = load_docker_config(path)
        self._checked = time.monotonic()

    def auths(self) -> dict[str, Credential]:
        """The credentials by host as of now (a dict not to be modified)."""
        now = time.monotonic()
        if now - self._checked < self.recheck_seconds:
            return self._auths
        with self._lock:
            if now - self._checked < self.recheck_seconds:  # another thread looked meanwhile
                return self._auths
            self._checked = now
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._auths = load_docker_config(self.path)
                    log.info("docker config %s changed: credentials for %d registries", self.path, len(self._auths))
                except InvalidArgumentError as exc:
                    log.warning("%s; keeping the credentials read before", exc)
            return self._auths


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one version of the file from another (os.stat follows a Secret's symlinks); None: absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


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
