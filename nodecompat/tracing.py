"""OpenTelemetry's tracing API, imported only once something has imported it (fast start, issue 11).

Spans only ever reach an exporter through a tracer provider installed with `opentelemetry.trace`
(server/telemetry.py's init_tracing when OTEL_* asks, or an embedding program), so while that module
was never imported no span can be recorded and no trace context can exist: the daemon's and the probe
runner's spans are then no-ops that cost neither the import (~15 ms of a daemon's start) nor a call.
Once it is imported, everything here is OpenTelemetry's own API (ProxyTracer semantics kept: a tracer
taken before a provider is installed follows it). Hand-written because the API has no lazy form.
"""

from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any


def loaded() -> bool:
    """True once `opentelemetry.trace` is imported (by anything in this process), or when
    OTEL_PYTHON_TRACER_PROVIDER names a provider OpenTelemetry would load by itself."""
    return "opentelemetry.trace" in sys.modules or bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))


class _NoSpan:
    """What a span does while no provider can exist: nothing (the subset our code calls)."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def record_exception(self, exc: BaseException) -> None:
        pass

    def set_status(self, *args: Any, **kw: Any) -> None:
        pass

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()


class LazyTracer:
    """trace.get_tracer(name), taken on the first span after OpenTelemetry is imported."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tracer: Any = None

    def start_as_current_span(self, name: str, **kw: Any) -> AbstractContextManager[Any]:
        if self._tracer is None:
            if not loaded():
                return nullcontext(NO_SPAN)
            from opentelemetry import trace

            self._tracer = trace.get_tracer(self.name)
        return self._tracer.start_as_current_span(name, **kw)


def current_span_recording() -> bool:
    """Whether the current span (OpenTelemetry's) records; False before OpenTelemetry is imported."""
    if not loaded():
        return False
    from opentelemetry import trace

    return bool(trace.get_current_span().is_recording())


def set_error(span: Any, message: str) -> None:
    """span.set_status(StatusCode.ERROR, message), for a real or a no-op span."""
    if span is NO_SPAN:
        return
    from opentelemetry import trace

    span.set_status(trace.StatusCode.ERROR, message)


def current_context() -> Any:
    """OpenTelemetry's current context, or None before OpenTelemetry is imported."""
    if not loaded():
        return None
    from opentelemetry import context

    return context.get_current()


def attach(ctx: Any) -> Any:
    """context.attach(ctx) (a token for detach), or None when `ctx` is None."""
    if ctx is None:
        return None
    from opentelemetry import context

    return context.attach(ctx)


def detach(token: Any) -> None:
    """context.detach(token) for a token of attach(); nothing for None."""
    if token is None:
        return
    from opentelemetry import context

    context.detach(token)
