"""Standard gRPC server plumbing shared by the node daemon and the aggregator.

One place for what every nodecompat server has: the thread-pool server with the OpenTelemetry
interceptor and our message-size limits, health (NOT_SERVING until ready) and reflection, and the
SIGTERM/SIGINT drain loop.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nodecompat.server import telemetry

log = logging.getLogger(__name__)

# Above the 1 MiB spec limit, so an oversized spec gets our INVALID_ARGUMENT, not RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 16 << 20
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def new_server(workers: int, thread_prefix: str) -> grpc.Server:
    """A thread-pool gRPC server with tracing interceptors; refuses to share its port (no SO_REUSEPORT)."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_prefix),
        interceptors=telemetry.server_interceptors(),
        options=[*MESSAGE_SIZE_OPTIONS, ("grpc.so_reuseport", 0)],
    )


def bind(server: grpc.Server, listen: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port; an OSError a person can act on when it cannot be bound."""
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {listen!r}: the port is in use or the host does not resolve "
            "(expected HOST:PORT, e.g. 127.0.0.1:50051 or 0.0.0.0:50051)"
        )
    return port


def add_standard_services(server: grpc.Server, service_names: list[str]) -> health.HealthServicer:
    """Health (initially NOT_SERVING) and reflection for the given services."""
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *service_names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    return health_servicer


def set_health(health_servicer: health.HealthServicer, service_names: list[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        health_servicer.set(name, status)


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
