"""A NodeService servicer for tests of server/runtime/runtime.py's fast path (ValidateImage's kept answers): the fast
path keeps KEPT for a request whose spec is "kept"; any other ValidateImage goes to the worker path (counted)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from nodecompat.v1 import features_pb2, node_pb2

KEPT = node_pb2.ValidateImageResponse(compatible=True, score=7).SerializeToString()


class KeptServicer:
    """GetFeatures: not served (a subclass may hold it); ValidateImage: a plain answer, counted in slow_calls."""

    def __init__(self) -> None:
        self.slow_calls = 0

    def GetFeatures(self, request: Any, context: Any) -> Any:
        raise NotImplementedError

    def ValidateImage(self, request: Any, context: Any) -> node_pb2.ValidateImageResponse:
        self.slow_calls += 1
        return node_pb2.ValidateImageResponse(compatible=False, score=1)

    def WatchFeatures(self, request: Any, context: Any) -> Iterator[Any]:
        return iter(())

    @staticmethod
    def kept(raw: bytes) -> bytes | None:
        """The fast path gets the request message's bytes: KEPT for spec "kept", else None (worker path)."""
        return KEPT if node_pb2.ValidateImageRequest.FromString(raw).spec == "kept" else None


class HoldingServicer(KeptServicer):
    """GetFeatures holds its worker (and its admission slot) until the test sets `release` (at most 30 s);
    `holding` is set once it does."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()

    def GetFeatures(self, request: Any, context: Any) -> features_pb2.GetFeaturesResponse:
        self.holding.set()
        self.release.wait(30)
        return features_pb2.GetFeaturesResponse(node_name="held")
