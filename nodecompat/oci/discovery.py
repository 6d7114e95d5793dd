"""Find and fetch an image's compatibility spec, as NFD's artifact client does, but without its
crashes and silent give-ups.

Steps (nfd.md §a.4): parse the reference; resolve it (with a platform, an index resolves to the
matching platform manifest; without, the descriptor is whatever the reference names — no fallback
between the two, exactly like NFD); list referrers of that descriptor (referrers API, else the
`sha256-<hex>` tag schema); keep artifacts of ARTIFACT_TYPE (descriptor artifactType, else the
manifest's artifactType or config mediaType, as oras does for pre-1.1 artifacts); take the newest by
`org.opencontainers.image.created` (missing or unparsable = oldest, ties broken by the greatest
digest so the choice is deterministic); fetch its manifest and layers[0], verifying digests and sizes
and refusing more than max_bytes. Where NFD panics (referrers lookup failed) we raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.oci import mediatypes as mt
from nodecompat.oci.auth import RegistryAuth
from nodecompat.oci.errors import InvalidArgumentError, NotFoundError, UnavailableError
from nodecompat.oci.manifest import (
    Descriptor,
    manifest_artifact_type,
    parse_descriptor,
    parse_descriptor_list,
    parse_json_object,
)
from nodecompat.oci.platform import Platform, parse_platform
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.oci.reference import Reference, parse_reference
from nodecompat.oci.repository import Repository
from nodecompat.oci.sessions import Budget, SessionPool
from nodecompat.oci.transport import Transport

MAX_CANDIDATES = 64  # artifact manifests we are willing to fetch to learn their type or date
_OLDEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class FetchedSpec:
    text: str
    reference: str
    image_digest: str
    artifact_digest: str
    created: str | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Discovered:
    """Result of resolution plus artifact selection, before the spec layer is downloaded."""

    reference: Reference
    image: Descriptor
    artifact: Descriptor
    created: str | None
    warnings: list[str]
    manifest_body: bytes | None = None  # the chosen artifact's manifest, if discovery fetched it


def open_repository(ref: Reference, *, plain_http: bool, auth: RegistryAuth | None, ca_file: str | None,
                    budget: Budget, pool: SessionPool | None,
                    policy: RegistryPolicy | None = None) -> Repository:
    """A Repository over a Transport; with a policy, PermissionDeniedError before any connection."""
    transport = Transport(ref.api_host, plain_http=plain_http, auth=auth, ca_file=ca_file,
                          budget=budget, pool=pool, policy=policy)
    return Repository(ref, transport)


def resolve(repo: Repository, platform: Platform | None) -> Descriptor:
    """The descriptor the reference names, or with a platform the matching platform manifest."""
    ref = repo.ref
    if platform is None:
        desc = repo.head_manifest(ref.target)
        if desc is None:
            desc = repo.get_manifest(ref.target).descriptor
        return desc
    fetched = repo.get_manifest(ref.target)
    data = fetched.json(f"manifest of {ref}")
    if fetched.descriptor.media_type in mt.INDEX_TYPES:
        for entry in parse_descriptor_list(data, "manifests", f"index of {ref}"):
            if platform.matches(entry.platform):
                return entry
        raise NotFoundError(f"image {ref} has no manifest for platform {platform}")
    # A single-platform manifest: its config says which platform it is (oras-go checks this too).
    config = data.get("config")
    if isinstance(config, dict):
        cdesc = parse_descriptor(config, f"manifest of {ref}.config")
        blob = repo.get_blob(cdesc, max_bytes=1 << 20, label=f"image config of {ref}")
        cfg = parse_json_object(blob, f"image config of {ref}")
        cand = {"os": cfg.get("os"), "architecture": cfg.get("architecture"),
                "variant": cfg.get("variant"), "os.version": cfg.get("os.version")}
        if platform.matches(cand):
            return fetched.descriptor
    raise NotFoundError(f"image {ref} is not built for platform {platform}")


def parse_created(value: str | None) -> datetime | None:
    """RFC 3339 timestamp -> aware datetime, or None when missing or unparsable."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # RFC 3339 requires an offset; treat a naked time as unparsable
        return None
    return parsed


def _load_manifest(repo: Repository, desc: Descriptor, seen: dict[str, bytes]) -> dict[str, Any] | None:
    """Fetch (once per discovery) a referrer's manifest; None if the registry no longer has it."""
    if desc.digest not in seen:
        try:
            seen[desc.digest] = repo.get_manifest(desc.digest, expected=desc,
                                                  what=f"referrer {desc.digest}").body
        except NotFoundError:
            return None
    return parse_json_object(seen[desc.digest], f"referrer {desc.digest}")


def _string_annotations(data: dict[str, Any]) -> dict[str, str]:
    raw = data.get("annotations")
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def classify_referrers(repo: Repository, referrers: list[Descriptor], artifact_type: str | None,
                       warnings: list[str], seen: dict[str, bytes] | None = None) -> list[Descriptor]:
    """Referrers whose artifact type is `artifact_type` (None = all). A descriptor without an
    artifactType costs a manifest fetch (its artifactType or config mediaType decides, as in oras);
    its annotations are filled in from that manifest too. Fetched bodies are kept in `seen`."""
    seen = {} if seen is None else seen
    out: list[Descriptor] = []
    for desc in referrers:
        at = desc.artifact_type
        annotations = desc.annotations
        if at is None:
            if desc.media_type not in mt.IMAGE_MANIFEST_TYPES:
                continue
            if len(seen) >= MAX_CANDIDATES:
                warnings.append(
                    f"more than {MAX_CANDIDATES} referrers lack an artifactType; the rest were skipped"
                )
                break
            data = _load_manifest(repo, desc, seen)
            if data is None:
                warnings.append(f"referrer {desc.digest} is listed but missing from the registry; skipped")
                continue
            at = manifest_artifact_type(data)
            annotations = annotations or _string_annotations(data)
        if artifact_type is not None and at != artifact_type:
            continue
        out.append(Descriptor(desc.media_type, desc.digest, desc.size, at, annotations, desc.platform))
    return out


def fill_annotations(repo: Repository, candidates: list[Descriptor], seen: dict[str, bytes],
                     warnings: list[str]) -> list[Descriptor]:
    """Annotations from the manifests of candidates whose listing had none (needed to rank them)."""
    out: list[Descriptor] = []
    for desc in candidates:
        if desc.annotations or len(seen) >= MAX_CANDIDATES:
            out.append(desc)
            continue
        data = _load_manifest(repo, desc, seen)
        if data is None:
            warnings.append(f"referrer {desc.digest} is listed but missing from the registry; skipped")
            continue
        out.append(Descriptor(desc.media_type, desc.digest, desc.size, desc.artifact_type,
                              _string_annotations(data), desc.platform))
    return out


def newest(candidates: list[Descriptor], warnings: list[str]) -> Descriptor:
    def key(desc: Descriptor) -> tuple[datetime, str]:
        created = parse_created(desc.annotations.get(mt.CREATED_ANNOTATION))
        if created is None and mt.CREATED_ANNOTATION_TYPO in desc.annotations:
            warnings.append(
                f"artifact {desc.digest} uses the annotation {mt.CREATED_ANNOTATION_TYPO!r} (a typo in "
                f"NFD's docs); like NFD we ignore it, so the artifact counts as oldest — use "
                f"{mt.CREATED_ANNOTATION!r}"
            )
        elif created is None and mt.CREATED_ANNOTATION in desc.annotations:
            warnings.append(
                f"artifact {desc.digest} has an unparsable {mt.CREATED_ANNOTATION}; counted as oldest"
            )
        return (created or _OLDEST, desc.digest)

    ranked = sorted(candidates, key=key, reverse=True)
    if len(ranked) > 1:
        warnings.append(
            f"{len(ranked)} compatibility artifacts found; using the newest, {ranked[0].digest}"
        )
    return ranked[0]


def discover(repo: Repository, platform: Platform | None) -> Discovered:
    """Resolve the image and choose its compatibility artifact (no spec download)."""
    ref = repo.ref
    warnings: list[str] = []
    image = resolve(repo, platform)
    try:
        referrers, _how = repo.referrers(image, mt.ARTIFACT_TYPE)
    except (NotFoundError, InvalidArgumentError, UnavailableError) as exc:
        # NFD panics here (nil spec); we say what failed.
        raise type(exc)(f"referrers lookup for {ref} ({image.digest}) failed: {exc}", exc.code) from exc
    seen: dict[str, bytes] = {}
    candidates = classify_referrers(repo, referrers, mt.ARTIFACT_TYPE, warnings, seen)
    if len(candidates) > 1:
        candidates = fill_annotations(repo, candidates, seen, warnings)
    if not candidates:
        hint = "" if platform is None else (
            f"; looked at the {platform} manifest: an artifact attached to the index is not used, as in NFD")
        raise NotFoundError(
            f"no compatibility artifact ({mt.ARTIFACT_TYPE}) is attached to {ref} ({image.digest}{hint})"
        )
    chosen = newest(candidates, warnings)
    return Discovered(ref, image, chosen, chosen.annotations.get(mt.CREATED_ANNOTATION), warnings,
                      seen.get(chosen.digest))


@dataclass(frozen=True)
class ArtifactContent:
    text: str
    created: str | None  # from the artifact manifest itself


def fetch_artifact_spec(repo: Repository, artifact: Descriptor, *, max_bytes: int, warnings: list[str],
                        manifest_body: bytes | None = None) -> ArtifactContent:
    """Read the artifact manifest (fetched now unless discovery already has it) and its first layer."""
    label = f"compatibility artifact {artifact.digest}"
    if manifest_body is None:
        manifest_body = repo.get_manifest(artifact.digest, expected=artifact, what=label).body
    data = parse_json_object(manifest_body, label)
    layers = parse_descriptor_list(data, "layers", label)
    if not layers:
        raise InvalidArgumentError(f"{label} of {repo.ref} has no layer (compatibility layer not found)")
    layer = layers[0]
    if layer.media_type != mt.SPEC_MEDIA_TYPE:
        warnings.append(
            f"spec layer of {artifact.digest} has media type {layer.media_type!r}, "
            f"not {mt.SPEC_MEDIA_TYPE!r}; read anyway, as NFD does"
        )
    blob = repo.get_blob(layer, max_bytes=max_bytes, label=f"spec layer {layer.digest} of {repo.ref}")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"spec layer {layer.digest} of {repo.ref} is not UTF-8 text") from exc
    return ArtifactContent(text, _string_annotations(data).get(mt.CREATED_ANNOTATION))


def fetch_compat_spec(
    reference: str,
    *,
    platform: str | None = None,
    plain_http: bool = False,
    auth: RegistryAuth | None = None,
    ca_file: str | None = None,
    timeout: float = 30.0,
    max_bytes: int = MAX_SPEC_BYTES,
    pool: SessionPool | None = None,
    policy: RegistryPolicy | None = None,
) -> FetchedSpec:
    """Find the newest compatibility artifact of `reference` and return its spec text.

    `timeout` is the overall budget in seconds; `policy` the servers' registry allow-list (None: any
    host, for the operator's CLI). Raises RegistryError (see errors.py for codes)."""
    ref = parse_reference(reference)
    plat = parse_platform(platform) if platform else None
    budget = Budget(timeout)
    repo = open_repository(ref, plain_http=plain_http, auth=auth, ca_file=ca_file, budget=budget, pool=pool,
                           policy=policy)
    found = discover(repo, plat)
    warnings = list(found.warnings)
    content = fetch_artifact_spec(repo, found.artifact, max_bytes=max_bytes, warnings=warnings,
                                  manifest_body=found.manifest_body)
    return FetchedSpec(content.text, str(ref), found.image.digest, found.artifact.digest,
                       found.created or content.created, warnings)

