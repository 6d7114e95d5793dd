"""Media types and annotation keys of the NFD image-compatibility artifact and of OCI/Docker manifests.

One definition of each string, imported everywhere (daemon, CLI, tests), so a typo cannot make two
parts of the project disagree about what an artifact is.
"""

from __future__ import annotations

# NFD's Go const ArtifactType (manifest `artifactType`).
ARTIFACT_TYPE = "application/vnd.nfd.image-compatibility.v1alpha1"
# Documented media type of the spec layer (NFD itself does not check it; we warn when it differs).
SPEC_MEDIA_TYPE = "application/vnd.nfd.image-compatibility.spec.v1alpha1+yaml"

CREATED_ANNOTATION = "org.opencontainers.image.created"
# The key NFD's docs example uses by mistake; NFD treats it as missing (artifact looks oldest).
CREATED_ANNOTATION_TYPO = "oci.opencontainers.image.created"
TITLE_ANNOTATION = "org.opencontainers.image.title"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

# The OCI empty descriptor's content: the two bytes `{}`.
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES

# Accept header for resolving a reference: any manifest or index, OCI first.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
