"""What a finished asyncio task keeps after it ended, dropped: its exception's traceback holds every frame the task
went through, with their locals (a grpc.aio call among them holds gRPC core's channel, hence a TCP connection)."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

MAX_CHAIN = 16  # chained exceptions (__context__/__cause__) cleared at most


def forget_outcome(task: asyncio.Task[Any]) -> None:
    """Take a finished task's outcome and clear the frames of its exception's traceback and of the exceptions chained
    to it, so that no local of those frames outlives the task. A cancelled task hands its CancelledError over
    (asyncio keeps it in the task until then: Task._cancelled_exc, Python 3.11+) and keeps no reference to it.
    Nothing happens to a task that is not done; the outcome itself is discarded, never raised."""
    if not task.done():
        return
    try:
        task.result()
    except BaseException as exc:  # whatever the task ended with is dropped here
        seen: BaseException | None = exc
        for _ in range(MAX_CHAIN):
            if seen is None:
                break
            if seen.__traceback__ is not None:
                traceback.clear_frames(seen.__traceback__)
                seen.__traceback__ = None
            seen = seen.__context__ or seen.__cause__
        del exc, seen
