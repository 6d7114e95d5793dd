"""Standard gRPC server plumbing shared by the node daemon and the aggregator.

One place for what every nodecompat server has: the grpc.aio runtime (server/runtime/runtime.py) with the
OpenTelemetry interceptor, our message-size and connection limits, health (NOT_SERVING until ready) and
reflection as coroutines that never wait for a worker, the open-file limit, and the SIGTERM/SIGINT drain
loop.

Reflection (grpcio-reflection's servicer) is registered at start but imported on its first call or by
warm_reflection(): its import (descriptor_pb2 and the servicer, ~5 ms) is not part of start-up, which
only needs health (issue 11). The method is registered with raw-bytes (de)serializers and the library's
own servicer parses and answers each message, so clients see the same service.
"""

from __future__ import annotations

import logging
import resource
import signal
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodecompat.server import telemetry
from nodecompat.server.limits import (
    KEEPALIVE_TIME,
    KEEPALIVE_TIMEOUT,
    MAX_CONNECTION_IDLE,
)
from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits

log = logging.getLogger(__name__)

# Above the 1 MiB spec limit, so an oversized spec gets our INVALID_ARGUMENT, not RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 16 << 20
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def server_options(max_connection_idle: float = MAX_CONNECTION_IDLE) -> list[tuple[str, object]]:
    """gRPC core options of every nodecompat server (message sizes, connection limits, no SO_REUSEPORT).

    What they cost an empty call (issue 11: Health/Check within 0.97 of a bare grpc.aio server), counted
    as instructions the server executes per call under callgrind (bench/bench_server_options.py
    --instructions; a bare server 502-508 k a call, ~0.6% apart run to run): max_connection_idle_ms,
    which adds gRPC core's idle/max-age filter to every call, +0.9-1.6% (506.2/507.4 k beside 501.7/502.6 k
    in one run, 513.4 k beside 505.3 k in another); the keepalive pair and the message limits +0.3% each
    (inside the spread); the whole list +0.5-0.7%; the daemon as a whole +0.2-1.0% (507.2 k beside 506.0 k,
    510.5 k beside 505.3 k). Per call, daemon and bare server make the same ~40 system calls and ~11
    context switches (perf stat): at 1-2% of the server's work, the gaps the bench's calls/s rows
    showed on this shared machine were their spread (a second bare server measures as far off).
    max_connection_idle stays: it is what closes idle connections (tests/test_dos_floods.py), and nothing
    cheaper does it: grpc.max_connection_age_ms is enforced by the same filter (grpc
    src/core/ext/filters/channel_idle/legacy_channel_idle_filter.cc), keepalive closes only peers that
    stop answering, and a sweep from outside core sees TCP traffic, not calls, so it could not tell an idle
    connection from one holding a quiet WatchFeatures stream.
    """
    return [
        *MESSAGE_SIZE_OPTIONS,
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_idle_ms", int(max_connection_idle * 1000)),
        ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
        ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
        # Clients (the aggregator's pooled channels) may ping idle connections every 20 s.
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ]


def new_runtime(name: str, limits: RuntimeLimits, max_connection_idle: float = MAX_CONNECTION_IDLE) -> Runtime:
    """A grpc.aio runtime with tracing interceptors; refuses to share its port (no SO_REUSEPORT)."""
    return Runtime(name, limits, server_options(max_connection_idle), telemetry.aio_server_interceptors())


def raise_open_file_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (each connection is a file); (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def bind(runtime: Runtime, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port; an OSError a person can act on when it cannot be bound."""
    port = runtime.bind(listen, credentials)
    if port == 0:
        raise OSError(
            f"cannot listen on {listen!r}: the port is in use or the host does not resolve "
            "(expected HOST:PORT, e.g. 127.0.0.1:50051 or 0.0.0.0:50051)"
        )
    return port


class Health:
    """grpc.health.v1 on the runtime's loop (asyncio servicer), settable from any thread."""

    def __init__(self, runtime: Runtime, service_names: list[str]) -> None:
        self.runtime = runtime
        self.names = ["", *service_names]

        async def make() -> health.aio.HealthServicer:
            servicer = health.aio.HealthServicer()
            for name in self.names:
                await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            return servicer

        self.servicer = runtime.call(make())

    def set(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

        async def apply() -> None:
            for name in self.names:
                await self.servicer.set(name, status)

        if self.runtime.loop.is_running():  # a round may end after the server stopped
            self.runtime.call(apply())

    def enter_graceful_shutdown(self) -> None:
        if self.runtime.loop.is_running():
            self.runtime.call(self.servicer.enter_graceful_shutdown())


# grpc_reflection.v1alpha.reflection.SERVICE_NAME, without importing it (a test checks they agree)
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_METHOD = "ServerReflectionInfo"


def warm_reflection() -> None:
    """Import the reflection servicer now (e.g. after start-up, in the background)."""
    from grpc_reflection.v1alpha import reflection  # noqa: F401


class _LazyReflection:
    """grpc.reflection.v1alpha.ServerReflection for a grpc.aio server, the library's servicer made on the
    first call. Its messages are (de)serialized here with the library's own classes."""

    def __init__(self, service_names: list[str]) -> None:
        self.service_names = service_names
        self._servicer: Any = None
        self._request_cls: Any = None

    def _make(self) -> None:
        from grpc_reflection.v1alpha import reflection, reflection_pb2

        self._request_cls = reflection_pb2.ServerReflectionRequest
        self._servicer = reflection.aio.ReflectionServicer(self.service_names)

    async def info(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if self._servicer is None:
            self._make()
        parse = self._request_cls.FromString

        async def parsed() -> AsyncIterator[Any]:
            async for raw in requests:
                yield parse(raw)

        async for response in self._servicer.ServerReflectionInfo(parsed(), context):
            yield response.SerializeToString()


def add_standard_services(runtime: Runtime, service_names: list[str]) -> Health:
    """Health (initially NOT_SERVING) and reflection for the given services."""
    h = Health(runtime, service_names)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, REFLECTION_SERVICE]
    handlers = {REFLECTION_METHOD: grpc.stream_stream_rpc_method_handler(_LazyReflection(names).info)}

    async def add() -> None:
        health_pb2_grpc.add_HealthServicer_to_server(h.servicer, runtime.server)
        # A generic handler only, not also a registered method as the generated code adds it: grpc.aio's
        # server loop awaits one pending request per registered method (asyncio.wait over all of them) for
        # every call it accepts, so each registered method costs every call of every method; reflection is
        # rare and can be found among the generic handlers (issue 11: an empty call as on a bare server).
        runtime.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_SERVICE, handlers),))

    runtime.call(add())
    return h


def set_health(h: Health, service_names: list[str], serving: bool) -> None:
    """Compatibility shim: set every service of `h` (service_names are those it was made with)."""
    h.set(serving)


def run_until_signal(stop: Callable[[], None], wait: Callable[[], None]) -> None:
    """Block until SIGTERM/SIGINT, then call stop() (which drains) and return."""
    done = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: draining", signum)
        done.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not done.wait(0.5):
        pass
    stop()
    wait()
