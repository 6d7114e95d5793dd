"""Domain errors -> gRPC status codes, in one place (the core never imports grpc).

Each message is meant for a person: it says what was wrong and, where it can, what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from nodecompat.oci.errors import RegistryError
from nodecompat.oci.platform import parse_platform

# Request fields every validation RPC (node and fleet) takes; each tag is echoed in reports.
MAX_TAGS = 256

# RegistryError.code values (nodecompat.oci.errors) -> gRPC codes.
REGISTRY_CODES: dict[str, grpc.StatusCode] = {
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def registry_status(code: str) -> grpc.StatusCode:
    return REGISTRY_CODES.get(code, grpc.StatusCode.UNKNOWN)


def spec_error_message(problems: list[str], origin: str = "spec") -> str:
    head = f"the {origin} is not a valid image compatibility spec ({len(problems)} problem(s)):"
    return "\n".join([head, *(f"  - {p}" for p in problems)])


def selection_problem(platform: str, tags: Sequence[str]) -> str:
    """What is wrong with a request's platform/tags ("" when nothing): checked the same way by the
    daemon and the aggregator, whether the spec comes from an image or inline."""
    if platform:
        try:
            parse_platform(platform)
        except RegistryError as exc:
            return f"platform: {exc}"
    if len(tags) > MAX_TAGS:
        return f"at most {MAX_TAGS} tags, got {len(tags)}"
    return ""
