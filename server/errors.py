"""Domain errors -> gRPC status codes, in one place (the core never imports grpc).

Each message is meant for a person: it says what was wrong and, where it can, what to do.
"""

from __future__ import annotations

import grpc

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
