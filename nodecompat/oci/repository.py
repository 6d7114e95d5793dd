"""The OCI distribution API calls on one repository: manifests, blobs, referrers, uploads.

Content is verified as it arrives: manifests and blobs are hashed while streaming, counted against a
size cap before and during download, and compared with the digest that was asked for, so a lying or
tampering registry is an INVALID_ARGUMENT error rather than wrong data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from nodecompat.oci import mediatypes as mt
from nodecompat.oci.errors import (
    InvalidArgumentError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from nodecompat.oci.manifest import Descriptor, parse_descriptor_list, parse_json_object
from nodecompat.oci.reference import Reference
from nodecompat.oci.transport import Transport

MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit for manifests
MAX_REFERRER_PAGES = 20
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchedManifest:
    descriptor: Descriptor
    body: bytes

    def json(self, where: str) -> dict[str, Any]:
        return parse_json_object(self.body, where)


def _hasher(digest: str) -> Any:
    algo = digest.split(":", 1)[0]
    if algo not in ("sha256", "sha512"):
        raise InvalidArgumentError(f"unsupported digest algorithm in {digest!r}")
    return hashlib.new(algo)


def _is_digest(target: str) -> bool:
    """Tags cannot contain ':', digests always do."""
    return ":" in target


def digest_of(data: bytes, algo: str = "sha256") -> str:
    return f"{algo}:{hashlib.new(algo, data).hexdigest()}"


class Repository:
    """One repository on one registry, reached through a Transport."""

    def __init__(self, ref: Reference, transport: Transport) -> None:
        self.ref = ref
        self.transport = transport
        self.name = ref.repository

    def _scope(self, push: bool) -> str:
        return f"repository:{self.name}:{'pull,push' if push else 'pull'}"

    def _req(self, method: str, url: str, *, push: bool = False, **kw: Any) -> requests.Response:
        return self.transport.request(method, url, scope=self._scope(push), **kw)

    # -- reading ---------------------------------------------------------------------------------

    def head_manifest(self, target: str) -> Descriptor | None:
        """HEAD a manifest: its descriptor from the registry's headers, or None when the headers lack
        a digest (the caller then GETs). Raises NotFoundError on 404."""
        resp = self._req("HEAD", f"/v2/{self.name}/manifests/{target}",
                         headers={"Accept": mt.MANIFEST_ACCEPT}, what=f"resolving {self.ref}")
        with resp:
            self._raise_for(resp, f"image {self.ref}")
            digest = resp.headers.get("Docker-Content-Digest")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            length = resp.headers.get("Content-Length")
        if not digest or not length or not length.isdigit() or media_type not in mt.MANIFEST_TYPES:
            return None
        if _is_digest(target) and digest != target:
            raise InvalidArgumentError(f"registry answered digest {digest} for {self.ref}")
        return Descriptor(media_type, digest, int(length))

    def get_manifest(self, target: str, *, expected: Descriptor | None = None,
                     what: str | None = None) -> FetchedManifest:
        """GET a manifest or index by tag or digest, verifying its digest."""
        label = what or f"image {self.ref}"
        resp = self._req("GET", f"/v2/{self.name}/manifests/{target}",
                         headers={"Accept": mt.MANIFEST_ACCEPT}, stream=True, what=f"fetching {label}")
        with resp:
            self._raise_for(resp, label)
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
            body = self._read_limited(resp, MAX_MANIFEST_BYTES, label)
        want = expected.digest if expected else target if _is_digest(target) else header_digest
        algo = want.split(":", 1)[0] if want else "sha256"
        got = digest_of(body, algo if algo in ("sha256", "sha512") else "sha256")
        if want and got != want:
            raise InvalidArgumentError(f"digest mismatch for {label}: expected {want}, content is {got}")
        if expected and expected.size != len(body):
            raise InvalidArgumentError(
                f"size mismatch for {label}: descriptor says {expected.size} bytes, got {len(body)}"
            )
        if media_type not in mt.MANIFEST_TYPES:
            # Some registries send a generic type; fall back to the document's own mediaType field.
            data = parse_json_object(body, label)
            declared = data.get("mediaType")
            media_type = declared if isinstance(declared, str) and declared in mt.MANIFEST_TYPES else (
                mt.OCI_INDEX if "manifests" in data else mt.OCI_MANIFEST)
        return FetchedManifest(Descriptor(media_type, got, len(body)), body)

    def get_blob(self, desc: Descriptor, *, max_bytes: int, label: str) -> bytes:
        """Download a blob, refusing more than max_bytes and verifying digest and size."""
        if desc.size > max_bytes:
            raise InvalidArgumentError(
                f"{label} is {desc.size} bytes, over the {max_bytes}-byte limit"
            )
        hasher = _hasher(desc.digest)
        resp = self._req("GET", f"/v2/{self.name}/blobs/{desc.digest}", stream=True,
                         what=f"downloading {label}")
        with resp:
            self._raise_for(resp, label)
            body = self._read_limited(resp, min(max_bytes, desc.size), label, hasher)
        got = f"{desc.digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if got != desc.digest:
            raise InvalidArgumentError(
                f"digest mismatch for {label}: expected {desc.digest}, content is {got}"
            )
        if len(body) != desc.size:
            raise InvalidArgumentError(
                f"size mismatch for {label}: descriptor says {desc.size} bytes, got {len(body)}"
            )
        return body

    def _read_limited(self, resp: requests.Response, limit: int, label: str,
                      hasher: Any = None) -> bytes:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise InvalidArgumentError(f"{label} is {declared} bytes, over the {limit}-byte limit")
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in resp.iter_content(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise InvalidArgumentError(f"{label} is larger than the {limit}-byte limit")
                if hasher is not None:
                    hasher.update(chunk)
                chunks.append(chunk)
                self.transport.budget.check(f"downloading {label}")
        except requests.exceptions.RequestException as exc:
            if self.transport.budget.remaining() <= 0:
                self.transport.budget.check(f"downloading {label}")
            raise UnavailableError(f"download of {label} from {self.ref.registry} broke off: {exc}") from exc
        return b"".join(chunks)

    def referrers(self, subject: Descriptor, artifact_type: str | None) -> tuple[list[Descriptor], str]:
        """List referrers of `subject`: the referrers API, else the `sha256-<hex>` tag schema.

        Returns (descriptors, how) where how is "api" or "tag". Not filtered here: the caller filters
        (a registry may ignore the artifactType query)."""
        url = f"/v2/{self.name}/referrers/{subject.digest}"
        params = f"?artifactType={artifact_type}" if artifact_type else ""
        out: list[Descriptor] = []
        next_url: str | None = url + params
        pages = 0
        while next_url and pages < MAX_REFERRER_PAGES:
            pages += 1
            resp = self._req("GET", next_url, headers={"Accept": mt.OCI_INDEX}, stream=True,
                             what=f"listing referrers of {self.ref}")
            with resp:
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                if pages == 1 and (resp.status_code in (404, 400, 405) or
                                   (resp.status_code == 200 and ctype != mt.OCI_INDEX)):
                    return self._referrers_by_tag(subject), "tag"
                self._raise_for(resp, f"referrers of {self.ref}")
                body = self._read_limited(resp, MAX_MANIFEST_BYTES, f"referrers of {self.ref}")
                link = resp.links.get("next", {}).get("url")
            data = parse_json_object(body, f"referrers index of {self.ref}")
            out.extend(parse_descriptor_list(data, "manifests", f"referrers index of {self.ref}"))
            next_url = urljoin(self.transport.base + url, link) if link else None
            if next_url and urlsplit(next_url).netloc != urlsplit(self.transport.base).netloc:
                # The registry's token must never be sent elsewhere: a page on another host ends paging.
                raise UnavailableError(
                    f"referrers of {self.ref}: the registry's next-page link points at another host ({link})"
                )
        return out, "api"

    def referrers_tag(self, subject: Descriptor) -> str:
        algo, hexpart = subject.digest.split(":", 1)
        return f"{algo}-{hexpart}"[:128]

    def _referrers_by_tag(self, subject: Descriptor) -> list[Descriptor]:
        index = self.get_referrers_index(subject)
        if index is None:
            return []
        return parse_descriptor_list(index, "manifests", f"referrers tag {self.referrers_tag(subject)}")

    def get_referrers_index(self, subject: Descriptor) -> dict[str, Any] | None:
        tag = self.referrers_tag(subject)
        try:
            fetched = self.get_manifest(tag, what=f"referrers tag {self.ref.registry}/{self.name}:{tag}")
        except NotFoundError:
            return None
        data = fetched.json(f"referrers tag {tag}")
        if fetched.descriptor.media_type not in mt.INDEX_TYPES:
            raise InvalidArgumentError(f"referrers tag {tag} of {self.ref} is not an index")
        return data

    # -- writing ---------------------------------------------------------------------------------

    def blob_exists(self, digest: str) -> bool:
        resp = self._req("HEAD", f"/v2/{self.name}/blobs/{digest}", push=True, what="checking a blob")
        with resp:
            if resp.status_code == 404:
                return False
            self._raise_for(resp, f"blob {digest}")
            return True

    def push_blob(self, data: bytes, digest: str) -> None:
        if self.blob_exists(digest):
            return
        resp = self._req("POST", f"/v2/{self.name}/blobs/uploads/", push=True, data=b"",
                         what="starting a blob upload")
        with resp:
            self._raise_for(resp, f"blob upload to {self.ref.registry}/{self.name}", ok=(202,))
            location = resp.headers.get("Location")
        if not location:
            raise UnavailableError(f"registry {self.ref.registry} gave no upload location")
        url = urljoin(self.transport.base + "/", location)
        url += ("&" if "?" in url else "?") + f"digest={digest}"
        resp = self._req("PUT", url, push=True, data=data,
                         headers={"Content-Type": "application/octet-stream"}, what="uploading a blob")
        with resp:
            self._raise_for(resp, f"blob upload {digest}", ok=(201, 204))

    def put_manifest(self, target: str, body: bytes, media_type: str) -> dict[str, str]:
        resp = self._req("PUT", f"/v2/{self.name}/manifests/{target}", push=True, data=body,
                         headers={"Content-Type": media_type}, what=f"pushing manifest {target}")
        with resp:
            self._raise_for(resp, f"manifest {target} of {self.ref.registry}/{self.name}", ok=(201, 200, 204))
            return {k.lower(): v for k, v in resp.headers.items()}

    # -- errors ----------------------------------------------------------------------------------

    def _raise_for(self, resp: requests.Response, label: str, ok: tuple[int, ...] = (200,)) -> None:
        if resp.status_code in ok:
            return
        detail = _error_detail(resp)
        if resp.status_code == 404:
            raise NotFoundError(f"{label} not found{detail}")
        if resp.status_code in (400, 413, 415):
            raise InvalidArgumentError(f"registry refused {label}: HTTP {resp.status_code}{detail}")
        raise UnavailableError(f"registry answered HTTP {resp.status_code} for {label}{detail}")


def _error_detail(resp: requests.Response) -> str:
    try:
        if resp.request.method == "HEAD":
            return ""
        text = resp.raw.read(4096, decode_content=True) if resp.raw else b""
        data = parse_json_object(text, "error body")
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return f" ({errors[0].get('code', '')}: {errors[0].get('message', '')})"[:300]
    except (RegistryError, OSError, ValueError, requests.exceptions.RequestException):
        pass
    return ""

