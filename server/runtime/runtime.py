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
- Fast paths (per unary method, optional) answer on the loop with no worker and no admission slot: a message
  fast path gets the request's bytes before parsing; a call fast path the parsed request and the context,
  while the loop does not lag (server/runtime/loop_gate.py). None from either: the call goes the usual way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

# What handlers see (limits, SyncContext, AbortRpc) lives in runtime_context; these names are also
# imported from here.
from nodecompat.server.runtime.loop_gate import LoopGate
from nodecompat.server.runtime.read_deadlines import ReadDeadlines
from nodecompat.server.runtime.runtime_context import (
    AbortRpc,
    RuntimeLimits,
    SyncContext,
    abandoned,
    apply_status,
    call_sync,
    check_start,
    leave_to_core,
    timer_left,
)

__all__ = ["STREAM_BUFFER", "AbortRpc", "Runtime", "RuntimeLimits", "SyncContext"]

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM_BUFFER = 64  # responses a sync streaming handler may run ahead of the network
STOP_TASKS_WAIT = 2.0  # seconds stop() lets the calls' tasks end after the server stopped (then again, cancelled)
EOF = grpc.aio.EOF  # what context.read() returns after the caller's half-close


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
        self.gate = LoopGate(self.loop)  # when call fast paths may answer; their counters (loop thread)
        self._terminated = threading.Event()
        self._read_deadlines = ReadDeadlines(self.loop)  # request messages' deadlines (loop thread only)

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
                     fast_paths: dict[str, Callable[[bytes], Any]] | None = None,
                     call_fast_paths: dict[str, Callable[[Any, grpc.aio.ServicerContext], Any]] | None = None) -> None:
        """Serve every method of `service` from the same-named method of `servicer` (sync or async).

        response_serializers: per method name, a serializer replacing the message's SerializeToString
        (e.g. one that passes ready serialized bytes through).
        fast_paths: per unary method name, a non-blocking function called on the event loop with the
        request message as received, serialized (bytes: it is parsed only when this has no answer), before
        admission; a result other than None is the answer (no worker, no admission slot).
        call_fast_paths: per unary method name, a non-blocking function called on the event loop with the
        parsed request and the call's grpc.aio context, before admission, unless the loop lags (loop_gate.py);
        a result other than None is the answer (no worker, no admission slot), AbortRpc its refusal (the
        call's status), None sends the call the usual way (it must not have changed anything then).
        """
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            fn = getattr(servicer, method.name)
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            serialize = (response_serializers or {}).get(method.name, resp_cls.SerializeToString)
            if method.client_streaming:
                raise NotImplementedError(f"{method.full_name}: client streaming is not supported")
            # grpc hands over the message's bytes (request_deserializer None passes them through) and the
            # runtime parses them (with a fast path only when it has no answer): a message that does not
            # parse is INVALID_ARGUMENT (grpc's own deserializer failure is UNKNOWN, 'Unexpected DecodeError').
            if method.server_streaming:
                behavior = self._streaming(fn, method.full_name, req_cls.FromString)
                handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                    behavior, request_deserializer=None, response_serializer=serialize)
                continue
            fast = (fast_paths or {}).get(method.name)
            on_loop = (call_fast_paths or {}).get(method.name)
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                self._unary(fn, method.full_name, fast, req_cls.FromString, on_loop),
                request_deserializer=None, response_serializer=serialize)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))

    async def _read_request(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                            method: str, fast: Callable[[bytes], Any] | None,
                            parse: Callable[[bytes], Any]) -> tuple[Any, Any]:
        """(the call's one request message, the fast path's answer or None). Exactly one request message,
        on the fast path as on the others: none or a second one is INVALID_ARGUMENT. The message arrives
        as bytes: `fast` (if any) is asked first and the message parsed with `parse` only when it has no
        answer (then the request is None); a message that does not parse is INVALID_ARGUMENT.

        The messages are read with context.read() rather than through `requests` (grpc.aio's request
        iterator wraps each read in an async generator step), and the wait for them is bounded through
        the loop's ReadDeadlines (server/runtime/read_deadlines.py: no timer per call)."""
        left = context.time_remaining()
        wait = self.limits.request_timeout if left is None else min(self.limits.request_timeout, left)
        callers = left is not None and left <= self.limits.request_timeout  # the wait ends at the caller's deadline
        task = asyncio.current_task()
        assert task is not None
        deadlines = self._read_deadlines
        deadlines.enter(task, time.monotonic() + wait)
        request: Any = EOF
        complete = False
        try:
            # The client's half-close is read too (it normally comes with the message): a second message
            # is refused, and answering before it makes gRPC core reset the stream, so the caller may then
            # see CANCELLED instead of the status. (It costs one more completion-queue round trip per call,
            # ~0.1 of the cached ValidateImage / Health ratio, serial: the unary contract's price.)
            request = await context.read()
            if request is EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the call carried no request message")
            complete = await context.read() is EOF
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            complete = request is not EOF  # message but no half-close: serve it anyway
            if not complete:
                await leave_to_core(time.monotonic(), not callers)
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{method}: the request message did not arrive within {wait:g} s of the call's start",
                )
        finally:
            deadlines.leave(task)
        if not complete:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: more than one request message")
        try:
            return _settle(request, fast, parse)
        except DecodeError as exc:  # e.g. "Error parsing message with type ...: Wire format was corrupt"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{method}: the request message does not parse ({exc})")
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
        """(monotonic deadline, whether the cap rather than the caller set it). The caller's deadline is
        enforced by gRPC core, which ends the call at it: the runtime's own timer then fires only
        CORE_END_GRACE later, as a backstop (timer_left), and answers are left to core near it (leave_to_core)."""
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

    def _unary(self, fn: Callable[..., Any], method: str, fast: Callable[[bytes], Any] | None,
               parse: Callable[[bytes], Any],
               on_loop: Callable[[Any, grpc.aio.ServicerContext], Any] | None = None) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(fn)

        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            request, answer = await self._read_request(requests, context, method, fast, parse)
            if answer is not None:  # e.g. a kept answer: no worker, no admission slot
                return answer
            if on_loop is not None and self.gate.open():
                try:
                    answer = on_loop(request, context)
                except AbortRpc as exc:
                    await context.abort(exc.code, exc.details, exc.trailing_metadata)
                if answer is not None:  # e.g. a lease renewed: no worker, no admission slot
                    self.gate.answers += 1
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
                fut = self.loop.run_in_executor(self.executor, run, call_sync, fn, request, sctx, method)
            fut.add_done_callback(self._release)
            try:
                async with asyncio.timeout(timer_left(deadline, capped)):  # no task, unlike wait_for
                    result = await asyncio.shield(fut)
            except TimeoutError:
                sctx.cancelled.set()
                fut.add_done_callback(abandoned)
                if is_async:
                    fut.cancel()
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late(method, capped))
            except asyncio.CancelledError:  # the caller cancelled: let the thread notice, free its slot later
                sctx.cancelled.set()
                fut.add_done_callback(abandoned)
                if is_async:
                    fut.cancel()
                raise
            except AbortRpc as exc:
                await leave_to_core(deadline, capped)
                await context.abort(exc.code, exc.details, exc.trailing_metadata)
            await leave_to_core(deadline, capped)
            await apply_status(sctx, context)
            return result

        return behavior

    def _streaming(self, fn: Callable[..., Any], method: str, parse: Callable[[bytes], Any]) -> Callable[..., Any]:
        is_async = inspect.isasyncgenfunction(fn)

        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            request, _ = await self._read_request(requests, context, method, None, parse)
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
                    check_start(sctx, method)
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
                                async with asyncio.timeout(timer_left(deadline, capped)):
                                    await ready.wait()
                            except TimeoutError:
                                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, self._late(method, capped))
                        continue
                    if kind == "item":
                        room.release()
                        await leave_to_core(deadline, capped)
                        yield value
                    elif kind == "end":
                        break
                    elif isinstance(value, AbortRpc):
                        await leave_to_core(deadline, capped)
                        await context.abort(value.code, value.details, value.trailing_metadata)
                    else:
                        raise value
                await leave_to_core(deadline, capped)
                await apply_status(sctx, context)
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
            self.call(self._end_tasks(), timeout=2 * STOP_TASKS_WAIT + 5.0)
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10.0)
            self._terminated.set()

    async def _end_tasks(self) -> None:
        """After server.stop: let the calls' tasks still on the loop end before it stops. gRPC core reports the
        server shut down once its calls are over, but a call's task may not have run yet the cancellation its
        client or the shutdown gave it (grpc/_cython/_cygrpc/aio/server.pyx.pxi AioServer.shutdown); stopping
        the loop then would leave its finally blocks unrun (its OpenTelemetry span never ended, never
        exported). Waits STOP_TASKS_WAIT for them, cancels what is left, waits as long again; then closes
        suspended async generators (as asyncio.run does at its end). Only the calls' own tasks are waited for
        (named by grpc.aio: "rpc_task", "HandleExceptions[METHOD]", server.pyx.pxi _schedule_rpc_coro and
        _handle_exceptions): other tasks on the loop (e.g. a channel pool's) stay as they were."""
        me = asyncio.current_task()
        calls = [t for t in asyncio.all_tasks() if t is not me and _is_call_task(t)]
        if calls:
            _done, left = await asyncio.wait(calls, timeout=STOP_TASKS_WAIT)
            for t in left:
                t.cancel()
            if left:
                await asyncio.wait(left, timeout=STOP_TASKS_WAIT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.loop.shutdown_asyncgens(), STOP_TASKS_WAIT)

    def wait(self) -> None:
        self._terminated.wait()


def _settle(message: bytes, fast: Callable[[bytes], Any] | None, parse: Callable[[bytes], Any]) -> tuple[Any, Any]:
    """_read_request's result for the one message read: (request, None), or (None, the fast path's answer);
    DecodeError when the message does not parse."""
    if fast is not None:
        answer = fast(message)
        if answer is not None:
            return None, answer
    return parse(message), None


def _is_call_task(task: asyncio.Task[Any]) -> bool:
    """A task grpc.aio made for one call (by the names it gives them, grpc 1.85 server.pyx.pxi)."""
    name = task.get_name()
    return name == "rpc_task" or name.startswith("HandleExceptions[")
