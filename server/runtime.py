"""How the daemon and the aggregator run their servicers: grpc.aio on an event-loop thread, blocking work in
a bounded executor, admission control and a duration cap on every work call.

Why not the thread-pool grpc.server it replaces: there every call holds a worker for its whole life and
Health shares the pool, so 16 half-open calls (headers, never the request message) or 16 calls stuck on
a trickling registry take every worker and Health, hence the kubelet's probe, stops answering.
Here (hand-written on grpc.aio because no maintained library adapts sync servicers with these limits):

- Health and reflection are coroutines on the event loop: they never wait for a worker.
- A work call's request message must arrive within `request_timeout`: the servicer's unary methods are
  registered server-side as stream-request (on the wire a unary request is a stream of one message), so
  the wait for the message has a deadline; a half-open call is ended with DEADLINE_EXCEEDED and holds only
  a coroutine meanwhile. Clients still see (and reflection still describes) unary methods.
- Admission: at most `max_concurrent_calls` work calls are admitted at once, counted from the arrival of
  their message until their work is done (also when the caller gave up first); more are refused at once
  with RESOURCE_EXHAUSTED naming the limit and its flag.
- Every work call has an effective deadline: the caller's, capped by `max_call_seconds` (calls without a
  deadline get exactly that). Sync handlers see it through context.time_remaining(); the call is answered
  DEADLINE_EXCEEDED at it even when its thread is still busy (the thread's slot is freed when it ends).
- Sync handlers (plain methods; generators for server streaming) run in a ThreadPoolExecutor of `workers`
  threads, carrying the call's OpenTelemetry context; coroutine handlers run on the loop directly.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM_BUFFER = 64  # responses a sync streaming handler may run ahead of the network
_NO_MESSAGE = object()  # _read_request: no request message read yet


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


class Runtime:
    """One grpc.aio server on its own event-loop thread, with the executor and admission of its work calls.

    Use from any thread: add services before start(); start(); stop(grace); wait().
    """

    def __init__(self, name: str, limits: RuntimeLimits, options: Sequence[tuple[str, Any]],
                 interceptors: Sequence[Any] = ()) -> None:
        self.name = name
        self.limits = limits
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"{name}-aio", daemon=True)
        self._thread.start()
        self.executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix=name)
        self.inflight = 0  # admitted work calls whose work has not ended (loop thread only)
        self.refused = 0
        self._terminated = threading.Event()

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(interceptors=list(interceptors), options=list(options))

        self.server: grpc.aio.Server = self.call(make())

    # -- loop plumbing -----------------------------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a coroutine on the loop from another thread and return its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("Runtime.call from the loop thread would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def soon(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Schedule a coroutine on the loop without waiting for it."""
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    # -- services ----------------------------------------------------------------------------------
    def add_servicer(self, servicer: object, service: _descriptor.ServiceDescriptor,
                     response_serializers: dict[str, Callable[[Any], bytes]] | None = None,
                     fast_paths: dict[str, Callable[[Any], Any]] | None = None) -> None:
        """Serve every method of `service` from the same-named method of `servicer` (sync or async).

        response_serializers: per method name, a serializer replacing the message's SerializeToString
        (e.g. one that passes ready serialized bytes through).
        fast_paths: per unary method name, a non-blocking function called on the event loop with the
        request before admission; a result other than None is the answer (no worker, no admission slot).
        """
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            fn = getattr(servicer, method.name)
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            serialize = (response_serializers or {}).get(method.name, resp_cls.SerializeToString)
            if method.client_streaming:
                raise NotImplementedError(f"{method.full_name}: client streaming is not supported")
            if method.server_streaming:
                behavior = self._streaming(fn, method.full_name)
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    behavior, request_deserializer=req_cls.FromString, response_serializer=serialize)
                continue
            fast = (fast_paths or {}).get(method.name)
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                self._unary(fn, method.full_name, fast), request_deserializer=req_cls.FromString,
                response_serializer=serialize)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

    async def _read_request(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                            method: str, fast: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
        """(the call's one request message, the fast path's answer or None)."""
        left = context.time_remaining()
        wait = self.limits.request_timeout if left is None else min(self.limits.request_timeout, left)
        request: Any = _NO_MESSAGE
        try:
            # One asyncio.timeout (not wait_for: no task) over both reads, one timer per call on the hot
            # path. The client's half-close is read too (it normally comes with the message): answering
            # before it makes gRPC core reset the stream, and the caller may then see CANCELLED instead
            # of the status.
            async with asyncio.timeout(max(0.0, wait)):
                request = await requests.__anext__()
                if fast is not None:
                    answer = fast(request)
                    if answer is not None:
                        # Answered at once, as grpc's own unary-unary handlers answer after the one message
                        # without reading the half-close (a unary client sends both in one frame): the
                        # read would cost one more completion-queue round trip per call.
                        return request, answer
                await requests.__anext__()
        except StopAsyncIteration:
            if request is not _NO_MESSAGE:
                return request, None
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the call carried no request message")
        except TimeoutError:
            if request is not _NO_MESSAGE:  # message but no half-close: serve it anyway
                return request, None
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"{method}: the request message did not arrive within {wait:g} s of the call's start",
            )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: more than one request message")
        raise AssertionError("unreachable: context.abort raises")

    def _admit(self, method: str) -> str:
        """'' when admitted (the caller must _release()), else the refusal message."""
        if self.inflight >= self.limits.max_concurrent_calls:
            self.refused += 1
            return (f"{method}: {self.inflight} calls are already in progress, the limit of this server "
                    f"({self.limits.concurrency_flag} {self.limits.max_concurrent_calls}); retry with backoff")
        self.inflight += 1
        return ""

    def _release(self, *_: object) -> None:
        if threading.current_thread() is self._thread:
            self.inflight -= 1
        else:
            self.loop.call_soon_threadsafe(self._release)

    def _deadline(self, context: grpc.aio.ServicerContext) -> tuple[float, bool]:
        """(monotonic deadline, whether the cap rather than the caller set it)."""
        left = context.time_remaining()
        cap = self.limits.max_call_seconds
        if left is None or left > cap:
            return time.monotonic() + cap, True
        return time.monotonic() + max(0.0, left), False

    def _late(self, method: str, capped: bool) -> str:
        if capped:
            return (f"{method}: the call ran into this server's maximum call duration "
                    f"({self.limits.duration_flag} {self.limits.max_call_seconds:g})")
        return f"{method}: the caller's deadline passed before the work was done"

    def _unary(self, fn: Callable[..., Any], method: str,
               fast: Callable[[Any], Any] | None = None) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(fn)

        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            request, answer = await self._read_request(requests, context, method, fast)
            if answer is not None:  # e.g. a kept answer: no worker, no admission slot
                return answer
            deadline, capped = self._deadline(context)
            refusal = self._admit(method)
            if refusal:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            sctx = SyncContext(context, deadline)
            if is_async:
                fut: asyncio.Future[Any] = asyncio.ensure_future(fn(request, context))
            else:
                run = contextvars.copy_context().run
                fut = self.loop.run_in_executor(self.executor, run, _call_sync, fn, request, sctx, method)
            fut.add_done_callback(self._release)
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):  # no task, unlike wait_for
                    result = await asyncio.shield(fut)
            except TimeoutError:
                sctx.cancelled.set()
                if is_async:
                    fut.cancel()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late(method, capped))
            except asyncio.CancelledError:  # the caller cancelled: let the thread notice, free its slot later
                sctx.cancelled.set()
                if is_async:
                    fut.cancel()
                raise
            except AbortRpc as exc:
                await context.abort(exc.code, exc.details, exc.trailing_metadata)
            await _apply(sctx, context)
            return result

        return behavior

    def _streaming(self, fn: Callable[..., Any], method: str) -> Callable[..., Any]:
        is_async = inspect.isasyncgenfunction(fn)

        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request, _ = await self._read_request(requests, context, method)
            if is_async:  # coroutine streams (long-lived watches) bound their own number and duration
                async for item in fn(request, context):
                    yield item
                return
            deadline, capped = self._deadline(context)
            refusal = self._admit(method)
            if refusal:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            sctx = SyncContext(context, deadline)
            out: queue.SimpleQueue[Any] = queue.SimpleQueue()
            ready = asyncio.Event()
            room = threading.Semaphore(STREAM_BUFFER)
            loop = self.loop

            def produce() -> None:
                try:
                    _check_start(sctx, method)
                    for item in fn(request, sctx):
                        while not room.acquire(timeout=0.2):
                            # A caller that stops reading leaves the buffer full: past the call's deadline
                            # (or the cap) the thread and the admission slot are given back regardless.
                            if sctx.cancelled.is_set() or time.monotonic() >= deadline:
                                return
                        out.put(("item", item))
                        loop.call_soon_threadsafe(ready.set)
                        if sctx.cancelled.is_set():
                            return
                    out.put(("end", None))
                except BaseException as exc:  # AbortRpc or a handler bug: reported on the loop
                    out.put(("error", exc))
                finally:
                    loop.call_soon_threadsafe(ready.set)

            fut = loop.run_in_executor(self.executor, contextvars.copy_context().run, produce)
            fut.add_done_callback(self._release)
            try:
                while True:
                    try:
                        kind, value = out.get_nowait()
                    except queue.Empty:
                        ready.clear()
                        if out.empty():
                            try:  # asyncio.timeout, not wait_for: no task per wait (one per streamed item)
                                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                                    await ready.wait()
                            except TimeoutError:
                                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late(method, capped))
                        continue
                    if kind == "item":
                        room.release()
                        yield value
                    elif kind == "end":
                        break
                    elif isinstance(value, AbortRpc):
                        await context.abort(value.code, value.details, value.trailing_metadata)
                    else:
                        raise value
                await _apply(sctx, context)
            finally:
                sctx.cancelled.set()

        return behavior

    # -- lifecycle ---------------------------------------------------------------------------------
    def bind(self, listen: str, credentials: grpc.ServerCredentials | None) -> int:
        async def add() -> int:
            if credentials is not None:
                return self.server.add_secure_port(listen, credentials)
            return self.server.add_insecure_port(listen)

        try:
            return self.call(add())
        except RuntimeError:
            return 0

    def start(self) -> None:
        self.call(self.server.start())

    def stop(self, grace: float | None) -> None:
        """Stop accepting calls, let calls in progress finish for `grace` seconds, then end everything."""
        try:
            self.call(self.server.stop(grace), timeout=None if grace is None else grace + 30.0)
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
            self._terminated.set()

    def wait(self) -> None:
        self._terminated.wait()


def _call_sync(fn: Callable[..., Any], request: Any, sctx: SyncContext, method: str) -> Any:
    _check_start(sctx, method)
    return fn(request, sctx)


def _check_start(sctx: SyncContext, method: str) -> None:
    if sctx.time_remaining() <= 0:
        raise AbortRpc(grpc.StatusCode.DEADLINE_EXCEEDED,
                       f"{method}: the call waited for a free worker until its deadline passed (server busy)")
    if sctx.cancelled.is_set():
        raise AbortRpc(grpc.StatusCode.CANCELLED, f"{method}: cancelled before it started")


async def _apply(sctx: SyncContext, context: grpc.aio.ServicerContext) -> None:
    if sctx.trailing is not None:
        context.set_trailing_metadata(sctx.trailing)
    if sctx.code is not None and sctx.code != grpc.StatusCode.OK:
        await context.abort(sctx.code, sctx.details or "")
    if sctx.details is not None:
        context.set_details(sctx.details)
