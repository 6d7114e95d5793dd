"""Hostile callers for the denial-of-service tests: raw half-open calls, floods of concurrent calls, and
a Health prober that asks (with a 1 s deadline of its own) while an attack runs.

No timed asserts: "Health answers within 1 s" is asserted as a Health call made with timeout=1 that
answered SERVING, never as measured elapsed time.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
from support_daemon import health_status


def never_yields(stop: threading.Event) -> Iterator[bytes]:
    """A request iterator that sends nothing until `stop` is set (then ends without a message)."""
    stop.wait()
    return
    yield b""  # pragma: no cover - makes this a generator


def half_open_calls(address: str, method: str, n: int, stop: threading.Event) -> tuple[grpc.Channel, list[grpc.Future]]:
    """n calls on `method` that send headers but never the request message, with no deadline."""
    ch = grpc.insecure_channel(address)
    call = ch.stream_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return ch, [call.future(never_yields(stop)) for _ in range(n)]


@dataclass
class HealthProbe:
    """Asks Health (timeout=1 s) in a loop on its own thread; records every answer."""

    address: str
    answers: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthProbe:
        def loop() -> None:
            while not self._stop.is_set():
                self.answers.append(health_status(self.address, timeout=1.0))
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


def codes(futures: list[grpc.Future]) -> list[grpc.StatusCode]:
    out = []
    for f in futures:
        try:
            f.result()
            out.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            out.append(exc.code())
    return out
