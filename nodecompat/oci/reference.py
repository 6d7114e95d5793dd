"""Parse `registry/repo[:tag|@digest]` image references.

Grammar follows distribution's reference package (the one oras-go's `registry.ParseReference`, used by
NFD, is built on), hand-written here because no maintained Python package implements it and the rules
are a handful of regular expressions. Like oras-go, the first path component is ALWAYS the registry
host: there is no Docker Hub shorthand (`ubuntu:22.04` is refused with a hint). Two conveniences,
both documented in the error-free path:
- a missing tag means `latest` (oras-go would fail with "missing reference");
- `docker.io/NAME` is sent to Docker Hub's API host `registry-1.docker.io` (as oras-go does) and a
  one-component Hub repository gets the `library/` prefix (as docker does).
`repo:tag@digest` is accepted; the digest wins, as in oras-go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nodecompat.oci.errors import InvalidArgumentError

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?$"
)
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_MAX_NAME = 255
DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Reference:
    """A parsed image reference. Exactly one of tag/digest is set."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Host (with port) the HTTP API is reached at."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What goes after /manifests/: the digest if known, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, None, digest)

    def __str__(self) -> str:
        base = f"{self.registry}/{self.repository}"
        return f"{base}@{self.digest}" if self.digest else f"{base}:{self.tag}"


def validate_digest(digest: str, what: str = "digest") -> str:
    """Return `digest` if it is a sha256/sha512 digest in canonical lowercase hex, else raise."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise InvalidArgumentError(
            f"invalid {what} {digest!r}: expected sha256:<64 hex> or sha512:<128 hex>"
        )
    return digest


def parse_reference(text: str) -> Reference:
    """Parse an image reference; raise InvalidArgumentError (code INVALID_ARGUMENT) with a hint."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgumentError("image reference is empty: expected registry/repo[:tag|@digest]")
    ref = text.strip()
    if len(ref) > 4096:
        raise InvalidArgumentError("image reference is too long")
    digest: str | None = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        validate_digest(digest, f"digest in image reference {text!r}")
    registry, sep, rest = ref.partition("/")
    if not sep or not rest:
        raise InvalidArgumentError(
            f"invalid image reference {text!r}: it must name the registry host, e.g. "
            f"registry.example.com/repo:tag (docker.io/library/NAME for Docker Hub)"
        )
    tag: str | None = None
    # A ':' after the last '/' separates the tag (a ':' in the host part is a port).
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise InvalidArgumentError(
                f"invalid tag {tag!r} in image reference {text!r}: up to 128 of [A-Za-z0-9_.-], "
                f"not starting with '.' or '-'"
            )
    if not _DOMAIN_RE.match(registry):
        raise InvalidArgumentError(f"invalid registry host {registry!r} in image reference {text!r}")
    for component in rest.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidArgumentError(
                f"invalid repository {rest!r} in image reference {text!r}: components are lowercase "
                f"[a-z0-9] separated by '.', '_', '__' or '-'"
            )
    if registry == DOCKER_HUB and "/" not in rest:
        rest = f"library/{rest}"
    if len(registry) + 1 + len(rest) > _MAX_NAME:
        raise InvalidArgumentError(f"image name in {text!r} is longer than {_MAX_NAME} characters")
    if digest:
        return Reference(registry, rest, None, digest)
    return Reference(registry, rest, tag or DEFAULT_TAG, None)
