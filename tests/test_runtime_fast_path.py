"""server/runtime/runtime.py's fast path (ValidateImage's kept answers): an answer the fast path has is sent on the
event loop right after the request message, needing neither a worker thread nor an admission slot, while
every other call still goes through admission (RESOURCE_EXHAUSTED when the slots are taken) and the
request-message rules. A real grpc.aio Runtime on a real port, with a NodeService servicer whose
GetFeatures holds the only worker and the only admission slot until the test lets it go."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from support_runtime import KEPT, HoldingServicer

from nodecompat.server.node.node_service import serialize_or_pass
from nodecompat.server.runtime.runtime import Runtime, RuntimeLimits
from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc


@pytest.fixture
def served() -> Any:
    servicer = HoldingServicer()
    rt = Runtime("fast-test", RuntimeLimits(workers=1, max_concurrent_calls=1, request_timeout=2.0), [])
    rt.add_servicer(servicer, node_pb2.DESCRIPTOR.services_by_name["NodeService"],
                    {"ValidateImage": serialize_or_pass}, fast_paths={"ValidateImage": servicer.kept})
    port = rt.bind("127.0.0.1:0", None)
    rt.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        servicer.release.set()
        rt.stop(0)


def test_a_kept_answer_is_served_while_the_worker_and_the_admission_slot_are_taken(served: Any) -> None:
    servicer, address = served
    with grpc.insecure_channel(address) as ch, ThreadPoolExecutor(1) as pool:
        stub = node_pb2_grpc.NodeServiceStub(ch)
        held = pool.submit(stub.GetFeatures, features_pb2.GetFeaturesRequest(), timeout=30)
        assert servicer.holding.wait(10)
        for _ in range(20):  # the fast path answers, as the same bytes every time, with no slot free
            raw = ch.unary_unary("/nodecompat.v1.NodeService/ValidateImage")(
                node_pb2.ValidateImageRequest(spec="kept").SerializeToString(), timeout=10)
            assert raw == KEPT
        with pytest.raises(grpc.RpcError) as refused:  # anything else still needs admission
            stub.ValidateImage(node_pb2.ValidateImageRequest(spec="other"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert servicer.slow_calls == 0
        servicer.release.set()
        assert held.result(30).node_name == "held"
        answer = stub.ValidateImage(node_pb2.ValidateImageRequest(spec="other"), timeout=10)
        assert (answer.compatible, answer.score) == (False, 1) and servicer.slow_calls == 1


def test_the_fast_path_keeps_the_request_message_rules(served: Any) -> None:
    """Two request messages on a unary method: refused alike whether the fast path has an answer or not
    (the unary contract, exactly one message, does not depend on a cache); with no message at all, refused
    before the fast path is asked."""
    servicer, address = served
    with grpc.insecure_channel(address) as ch:
        as_stream = ch.stream_unary("/nodecompat.v1.NodeService/ValidateImage")
        other = node_pb2.ValidateImageRequest(spec="other").SerializeToString()
        kept = node_pb2.ValidateImageRequest(spec="kept").SerializeToString()
        for first, second in ((other, other), (kept, kept), (kept, other)):
            with pytest.raises(grpc.RpcError) as two:
                as_stream(iter([first, second]), timeout=10)
            assert two.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than one request message" in (two.value.details() or "")
        assert servicer.slow_calls == 0
        assert as_stream(iter([kept]), timeout=10) == KEPT  # one message streamed: answered as a unary call
        with pytest.raises(grpc.RpcError) as none:
            as_stream(iter([]), timeout=10)
        assert none.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no request message" in (none.value.details() or "")
