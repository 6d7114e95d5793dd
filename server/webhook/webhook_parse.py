"""Where the webhook parses AdmissionReview bodies: inline when small, in worker processes when large.

json.loads of a 3 MiB review takes ~100 ms of CPU and holds the GIL the whole time (the C decoder never
releases it), so a worker *thread* would stall the event loop just the same. Bodies over
PARSE_INLINE_BYTES are parsed in a pool of PARSE_PROCESSES worker processes (multiprocessing "spawn": the
server holds threads and gRPC state that fork would copy), which send back only what an answer is built
from (nodecompat.admission.review.parse_review_slim).

Shutdown is orderly, because the stock executor's is not at interpreter exit: the workers ignore
SIGTERM/SIGINT sent to the whole process group (a container runtime, Ctrl-C, `kill -- -PGID`) so the pool
does not break under the webhook while it drains, and close() joins the pool (bounded) rather than
abandoning it — an executor abandoned with a dead worker makes CPython 3.11's atexit hook
(concurrent/futures/process.py _python_exit) write to a closed pipe and print
"OSError: [Errno 9] Bad file descriptor" at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from nodecompat.admission import review as rv

PARSE_INLINE_BYTES = 64 * 1024  # larger review bodies are parsed in a worker process
PARSE_PROCESSES = 2  # worker processes parsing large bodies (the machine's cores, not more)
PARSE_SHUTDOWN_S = 5.0  # seconds close() waits for the workers to finish and exit


def _worker_init() -> None:
    """In each worker: signals sent to the whole process group are the webhook's to act on; the worker
    ends when the webhook shuts the pool down, or when its pipe closes because the webhook died."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ReviewParser:
    """Parses review bodies (rv.parse_review's result); owns the worker pool, made on first need."""

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                PARSE_PROCESSES, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
            )
        return self.pool

    def start(self) -> None:
        """Start a worker now (spawning one takes ~0.3 s), not at the first large review; not awaited."""
        self._pool().submit(os.getpid)

    async def close(self) -> None:
        """Join the workers (at most PARSE_SHUTDOWN_S; a parse is bounded by the review deadline)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True), PARSE_SHUTDOWN_S
                )

    async def parse(self, body: bytes) -> rv.PodReview:
        """The review in `body`: inline up to PARSE_INLINE_BYTES, else in a worker process (the event loop
        keeps answering meanwhile). rv.ReviewError as parse_review; BrokenProcessPool when a worker died
        (the pool is replaced for the next review)."""
        if len(body) <= PARSE_INLINE_BYTES:
            return rv.parse_review(body)
        pool = self._pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, rv.parse_review_slim, body)
        except BrokenProcessPool:
            if self.pool is pool:
                self.pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise
