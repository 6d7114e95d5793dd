"""Registry errors with a status code the daemon maps to gRPC and the CLI prints.

Every failure of the OCI client is a RegistryError carrying one of a small set of codes, named like
gRPC's so the servicer maps them in one place; the message says what went wrong and what to do.
"""

from __future__ import annotations

from typing import ClassVar

NOT_FOUND = "NOT_FOUND"
UNAVAILABLE = "UNAVAILABLE"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"

CODES = frozenset({NOT_FOUND, UNAVAILABLE, UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT,
                   DEADLINE_EXCEEDED})


class RegistryError(Exception):
    """A registry operation failed; `.code` is one of CODES."""

    default_code: ClassVar[str] = UNAVAILABLE

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        if self.code not in CODES:
            raise ValueError(f"unknown registry error code {self.code!r}")


class NotFoundError(RegistryError):
    default_code = NOT_FOUND


class UnavailableError(RegistryError):
    default_code = UNAVAILABLE


class UnauthenticatedError(RegistryError):
    default_code = UNAUTHENTICATED


class PermissionDeniedError(RegistryError):
    default_code = PERMISSION_DENIED


class InvalidArgumentError(RegistryError):
    default_code = INVALID_ARGUMENT


class DeadlineExceededError(RegistryError):
    default_code = DEADLINE_EXCEEDED
