"""Domain errors -> gRPC status codes, in one place (the core never imports grpc).

Each message is meant for a person: it says what was wrong and, where it can, what to do.
The google.rpc status protos and the platform parser are imported by the functions that use them (error
paths, a request naming a platform), not when a server starts (issue 11, fast start).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import grpc

from nodecompat.oci.errors import RegistryError

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


# A status travels in HTTP/2 trailers, which gRPC clients cap (by default a soft limit of 8 KiB, where
# calls start being refused at random, and a hard one of 16 KiB): past it the caller gets
# RESOURCE_EXHAUSTED instead of our answer. So the message lists the first few problems only, and
# the details (google.rpc.BadRequest, one field violation per problem) stay under a byte budget a
# default client accepts. A client that raised its own limit says so in DETAILS_BUDGET_METADATA
# (the nodecompat CLI does) and gets up to MAX_STATUS_DETAILS_BYTES: every problem of any
# accepted spec.
MAX_MESSAGE_PROBLEMS = 5
MAX_PROBLEM_CHARS = 300
DEFAULT_STATUS_DETAILS_BYTES = 6 * 1024
MAX_STATUS_DETAILS_BYTES = 1 << 20
DETAILS_BUDGET_METADATA = "nodecompat-status-details-bytes"
_DETAILS_KEY = "grpc-status-details-bin"


class ProblemStatus(NamedTuple):
    """A grpc.Status (code, details, trailing_metadata) for `context.abort_with_status`."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def _clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def spec_error_message(problems: list[str], origin: str = "spec") -> str:
    """The first MAX_MESSAGE_PROBLEMS problems (each clipped), then "and N more": a few hundred bytes."""
    head = f"the {origin} is not a valid image compatibility spec ({len(problems)} problem(s)):"
    lines = [head, *(f"  - {_clip(p)}" for p in problems[:MAX_MESSAGE_PROBLEMS])]
    if len(problems) > MAX_MESSAGE_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_MESSAGE_PROBLEMS} more (all are in the status details)")
    return "\n".join(lines)


def split_location(problem: str) -> tuple[str, str]:
    """("compatibilities[0].rules[1]", "unknown field ...") from "compatibilities[0].rules[1]: unknown field ..."."""
    where, sep, what = problem.partition(": ")
    if sep and (where.startswith("line ") or (where and " " not in where)):
        return where, what
    return "", problem


def details_budget(invocation_metadata: Sequence[tuple[str, str | bytes]] | None) -> int:
    """The details byte budget a caller announced in DETAILS_BUDGET_METADATA, within our bounds."""
    for key, value in invocation_metadata or ():
        if key == DETAILS_BUDGET_METADATA:
            try:
                asked = int(value)
            except (TypeError, ValueError):
                break
            return max(DEFAULT_STATUS_DETAILS_BYTES, min(asked, MAX_STATUS_DETAILS_BYTES))
    return DEFAULT_STATUS_DETAILS_BYTES


def problems_status(
    code: grpc.StatusCode, message: str, problems: Sequence[str], budget: int = DEFAULT_STATUS_DETAILS_BYTES
) -> ProblemStatus:
    """A status whose details (google.rpc.BadRequest) list `problems` as field violations (field = the
    problem's location) until the serialized status reaches `budget` bytes; the rest are counted in
    a last violation. `message` is sent as is (keep it short: spec_error_message)."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    bad = error_details_pb2.BadRequest()
    size = len(message.encode()) + 32
    listed = 0
    for p in problems:
        field, desc = split_location(p)
        v = error_details_pb2.BadRequest.FieldViolation(field=_clip(field, 512), description=_clip(desc, 1024))
        cost = v.ByteSize() + 4
        if size + cost > budget - 128:
            break
        bad.field_violations.append(v)
        size += cost
        listed += 1
    if listed < len(problems):
        bad.field_violations.append(
            error_details_pb2.BadRequest.FieldViolation(
                description=f"and {len(problems) - listed} more problem(s) not listed: the status details "
                "are kept under the caller's metadata limit; `nodecompat lint` lists them all"
            )
        )
    packed = any_pb2.Any()
    packed.Pack(bad)
    st = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[packed])
    return ProblemStatus(code, message, ((_DETAILS_KEY, st.SerializeToString()),))


def problems_from_status(rpc_error: grpc.RpcError) -> list[str]:
    """Every problem carried in a status's BadRequest details ("location: description"), [] when none."""
    md = getattr(rpc_error, "trailing_metadata", lambda: None)() or ()
    raw = next((v for k, v in md if k == _DETAILS_KEY), None)
    if not raw:
        return []
    from google.rpc import error_details_pb2, status_pb2

    st = status_pb2.Status()
    try:
        st.ParseFromString(raw)
    except Exception:
        return []
    out: list[str] = []
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            out.extend(f"{v.field}: {v.description}" if v.field else v.description for v in bad.field_violations)
    return out


def spec_error_status(
    problems: list[str], origin: str, invocation_metadata: Sequence[tuple[str, str | bytes]] | None = None
) -> ProblemStatus:
    """INVALID_ARGUMENT for a spec: a short message, every problem (within the budget) in the details."""
    return problems_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        spec_error_message(problems, origin),
        problems,
        details_budget(invocation_metadata),
    )


def selection_problem(platform: str, tags: Sequence[str]) -> str:
    """What is wrong with a request's platform/tags ("" when nothing): checked the same way by the
    daemon and the aggregator, whether the spec comes from an image or inline."""
    if platform:
        from nodecompat.oci.platform import parse_platform

        try:
            parse_platform(platform)
        except RegistryError as exc:
            return f"platform: {exc}"
    if len(tags) > MAX_TAGS:
        return f"at most {MAX_TAGS} tags, got {len(tags)}"
    return ""
