"""One node's ValidateImage call within a fan-out: the attempt (traced or not), the retry rule, the outcome.

Each node has its own deadline (from its first attempt, `node_timeout`, never past the overall
deadline); UNAVAILABLE (refused, reset, daemon gone) is retried once after a short backoff when the
node's time allows (MAX_ATTEMPTS); every other status ends the node. Tracing costs nothing when it is
off. When the caller's span is recording, attempts of one node sit under a `fleet.node` span that is a
child of the caller's span, and each attempt opens a CLIENT span (named like the OpenTelemetry gRPC
instrumentation's) and sends W3C trace context in its metadata. The scheduler that drives these calls
is server/fleet/fanout.py (which re-exports FanoutConfig and NodeOutcome).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import propagate, trace

from nodecompat.server.fleet.channel_pool import VALIDATE_METHOD, PoolEntry
from nodecompat.server.inventory.fleet_nodes import FleetNode
from nodecompat.v1 import node_pb2

MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class FanoutConfig:
    concurrency: int = 64
    node_timeout: float = 10.0
    retry_backoff: float = 0.2
    # Do not start (or retry) an attempt with less time than this left for it.
    min_attempt: float = 0.05

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not self.node_timeout > 0:
            raise ValueError("node timeout must be > 0")


@dataclass(slots=True)
class NodeOutcome:
    """How one node's call ended. `response` is set when status is OK."""

    node: FleetNode
    status: str
    response: node_pb2.ValidateImageResponse | None = None
    error: str = ""
    latency: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class NodeCall:
    """One node's place in a fan-out: its span, deadline, attempts so far and the attempt in flight."""

    node: FleetNode
    span: trace.Span | None = None
    started: float = 0.0
    node_deadline: float = 0.0
    attempts: int = 0
    task: asyncio.Task[Any] | None = None
    last_error: tuple[str, str] = ("", "")
    seq: int = field(default_factory=itertools.count().__next__)


Event = tuple[NodeCall, str, str, "node_pb2.ValidateImageResponse | None"]  # call, code, details, response

async def attempt(
    tracer: trace.Tracer,
    call: NodeCall,
    entry: PoolEntry,
    request: node_pb2.ValidateImageRequest,
    budget: float,
    settle: Callable[[NodeCall, str, str, node_pb2.ValidateImageResponse | None], None],
) -> None:
    entry.inflight += 1  # the pool does not close a channel with a call in flight
    try:
        if call.span is not None:
            await attempt_on(tracer, call, entry.validate, request, budget, settle)
            return
        try:  # tracing off: nothing but the call (inline: one coroutine per attempt, as a bare aio call)
            resp = await entry.validate(request, timeout=budget)
        except grpc.aio.AioRpcError as exc:
            settle(call, exc.code().name, exc.details() or "", None)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            settle(call, "UNKNOWN", str(exc), None)
            return
        settle(call, "OK", "", resp)
    finally:
        entry.inflight -= 1

async def attempt_on(
    tracer: trace.Tracer,
    call: NodeCall,
    method: grpc.aio.UnaryUnaryMultiCallable,
    request: node_pb2.ValidateImageRequest,
    budget: float,
    settle: Callable[[NodeCall, str, str, node_pb2.ValidateImageResponse | None], None],
) -> None:
    """One traced attempt: a CLIENT span under the node's span, W3C trace context in the metadata."""
    assert call.span is not None  # attempt() calls this only when tracing
    ctx = trace.set_span_in_context(call.span)
    span = tracer.start_span(
        VALIDATE_METHOD,
        context=ctx,
        kind=trace.SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": "nodecompat.v1.NodeService",
            "rpc.method": "ValidateImage",
            "net.peer.name": call.node.address.rpartition(":")[0],
            "net.peer.port": call.node.address.rpartition(":")[2],
        },
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span, ctx))
    code, details, resp = "OK", "", None
    try:
        resp = await method(request, timeout=budget, metadata=tuple(carrier.items()))
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    except asyncio.CancelledError:
        code, details = "CANCELLED", "call cancelled"
        raise
    except Exception as exc:
        code, details = "UNKNOWN", str(exc)
    finally:
        span.set_attribute("rpc.grpc.status_code", getattr(grpc.StatusCode, code).value[0])
        if code != "OK":
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{code}: {details}"[:200]))
        span.end()
    settle(call, code, details, resp)

def settle_attempt(
    config: FanoutConfig,
    call: NodeCall,
    code: str,
    details: str,
    resp: node_pb2.ValidateImageResponse | None,
    now: float,
    backoff: list[tuple[float, int, NodeCall]],
) -> NodeOutcome | None:
    if code == "OK":
        return finish(call, now, "OK", "", resp)
    call.last_error = (code, details)
    retry_at = now + config.retry_backoff
    if (
        code == "UNAVAILABLE"
        and call.attempts < MAX_ATTEMPTS
        and call.node_deadline - retry_at >= config.min_attempt
    ):
        if call.span is not None:
            call.span.add_event("retry", {"after_status": code, "backoff_s": config.retry_backoff})
        heapq.heappush(backoff, (retry_at, call.seq, call))
        return None
    return finish(call, now, code, details, None)

def finish(
    call: NodeCall, now: float, status: str, error: str, response: node_pb2.ValidateImageResponse | None
) -> NodeOutcome:
    if call.span is not None:
        call.span.set_attribute("nodecompat.node.status", status)
        call.span.set_attribute("nodecompat.node.attempts", call.attempts)
        if status != "OK":
            call.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{status}: {error}"[:200]))
        call.span.end()
        call.span = None
    return NodeOutcome(
        node=call.node,
        status=status,
        response=response,
        error=error,
        latency=max(0.0, now - call.started) if call.started else 0.0,
        attempts=call.attempts,
    )
