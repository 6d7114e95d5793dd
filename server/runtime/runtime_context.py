"""What a work call's handler sees on the grpc.aio runtime (server/runtime/runtime.py): the server's limits, the
context a sync handler gets in its worker thread, and how its abort/status reaches the call.

SyncContext is the subset of grpc.ServicerContext our sync handlers use, safe from a worker thread
(everything it reads from the call is captured on the event loop when the call is admitted); AbortRpc
is raised by its abort(), as grpc's sync context does, and turned into the call's status on the loop
(apply_status). Split from server/runtime/runtime.py (which stays the server, admission and deadlines).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

log = logging.getLogger("nodecompat.server.runtime.runtime")


@dataclass(frozen=True)
class RuntimeLimits:
    """Limits of one server (units: calls, seconds, threads). The flags that set them are named in errors."""

    workers: int = 16
    max_concurrent_calls: int = 64
    max_call_seconds: float = 300.0
    request_timeout: float = 10.0
    concurrency_flag: str = "--max-concurrent-calls"
    duration_flag: str = "--max-call-seconds"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.max_concurrent_calls < 1:
            raise ValueError("workers and max_concurrent_calls must be >= 1")
        if not (self.max_call_seconds > 0 and self.request_timeout > 0):
            raise ValueError("max_call_seconds and request_timeout must be > 0")


class AbortRpc(Exception):
    """Raised by SyncContext.abort (as grpc's sync context does) and turned into the call's status."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 trailing_metadata: Sequence[tuple[str, str | bytes]] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)


class SyncContext:
    """The grpc.ServicerContext subset our sync handlers use, safe to call from a worker thread.

    time_remaining() is the effective deadline (the caller's, capped by max_call_seconds); the caller's
    metadata, peer and auth context are captured on the loop when the call is admitted.
    """

    def __init__(self, context: grpc.aio.ServicerContext, deadline: float) -> None:
        self._deadline = deadline
        self.cancelled = threading.Event()
        self._metadata = context.invocation_metadata()
        self._peer = context.peer()
        self._auth = context.auth_context()
        self._peer_identities = context.peer_identities()
        self._peer_identity_key = context.peer_identity_key()
        self.code: grpc.StatusCode | None = None
        self.details: str | None = None
        self.trailing: Sequence[tuple[str, str | bytes]] | None = None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AbortRpc(code, details)

    def abort_with_status(self, status: grpc.Status) -> None:
        """Like grpc's: the status's code, details and trailing metadata (e.g. google.rpc.Status details)."""
        raise AbortRpc(status.code, status.details, status.trailing_metadata or ())

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return not self.cancelled.is_set() and time.monotonic() < self._deadline

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Any:
        return self._auth

    def peer_identities(self) -> Any:
        return self._peer_identities

    def peer_identity_key(self) -> Any:
        return self._peer_identity_key

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = metadata


def call_sync(fn: Callable[..., Any], request: Any, sctx: SyncContext, method: str) -> Any:
    check_start(sctx, method)
    return fn(request, sctx)


def check_start(sctx: SyncContext, method: str) -> None:
    if sctx.time_remaining() <= 0:
        raise AbortRpc(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"{method}: the call waited for a free worker until its deadline passed (server busy)")
    if sctx.cancelled.is_set():
        raise AbortRpc(grpc.StatusCode.CANCELLED, f"{method}: cancelled before it started")


async def apply_status(sctx: SyncContext, context: grpc.aio.ServicerContext) -> None:
    if sctx.trailing is not None:
        context.set_trailing_metadata(sctx.trailing)
    if sctx.code is not None and sctx.code != grpc.StatusCode.OK:
        await context.abort(sctx.code, sctx.details or "")
    if sctx.details is not None:
        context.set_details(sctx.details)


def abandoned(fut: asyncio.Future[Any]) -> None:
    """Done callback of a work its call no longer awaits (answered at its deadline, or cancelled): the outcome
    is read here, an AbortRpc (e.g. "waited for a free worker") silently, anything else logged; asyncio would
    otherwise log every one as "Future exception was never retrieved"."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None and not isinstance(exc, AbortRpc):
        log.error("a call's work failed after the call had ended", exc_info=exc)


CORE_END_MARGIN = 0.02  # s: a status or answer ready this close to the caller's own deadline is left to gRPC core
CORE_END_GRACE = 1.0  # s past the caller's deadline the runtime waits for core to end a call before ending it


async def leave_to_core(deadline: float, capped: bool) -> None:
    """Call before writing a work call's answer or status (deadline: time.monotonic() seconds; capped: the
    server's cap, not the caller, set it). When the caller set it and it is less than CORE_END_MARGIN away or
    past, waits for gRPC core, which ends the call itself at the caller's deadline (DEADLINE_EXCEEDED) and has
    grpc.aio cancel the call's task, so this wait normally ends in CancelledError; returns after
    CORE_END_GRACE past the deadline if core did not end it. Otherwise returns at once.

    Why: a status written at the moment core ends the call goes to an ended call; its batch fails in core
    and grpc.aio logs "ExecuteBatchError raised in core by servicer method" at ERROR unless it has already
    seen the client's close (grpc 1.85 grpc/_cython/_cygrpc/aio/server.pyx.pxi, _handle_exceptions and
    _handle_cancellation_from_core, two completions whose order is not fixed). A caller choosing its deadline
    could make the daemon log errors at will."""
    if capped:
        return
    left = deadline - time.monotonic()
    if left < CORE_END_MARGIN:
        await asyncio.sleep(max(0.0, left) + CORE_END_GRACE)


def timer_left(deadline: float, capped: bool) -> float:
    """Seconds until the runtime ends a work call itself (deadline: time.monotonic() seconds): at the cap; when the
    caller set the deadline, CORE_END_GRACE after it, by when gRPC core has ended the call (leave_to_core)."""
    return max(0.0, deadline + (0.0 if capped else CORE_END_GRACE) - time.monotonic())
