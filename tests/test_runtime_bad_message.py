"""A request message that does not parse is the caller's error: INVALID_ARGUMENT naming the method, on
every method of a real daemon (the ValidateImage fast path's bytes, the worker path's unary methods,
WatchFeatures' stream), and the daemon answers on. grpc.aio's own deserializer failure surfaced as UNKNOWN
'Unexpected <class DecodeError>' (server/runtime/runtime.py parses the message itself now)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support_daemon import daemon_factory, health_status  # noqa: F401  (fixture)

pytest.importorskip("nodecompat.server.runtime.runtime", reason="the grpc.aio server runtime")

HOST = Path(__file__).parent / "fixtures" / "hosts" / "plain-vm"
CORRUPT = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
METHODS = ["ValidateImage", "GetFeatures"]


@pytest.mark.parametrize("method", METHODS)
def test_a_corrupt_unary_request_is_invalid_argument(daemon_factory, method: str) -> None:  # noqa: F811
    d = daemon_factory("--host-root", str(HOST))
    with grpc.insecure_channel(d.address) as ch:
        for _ in range(2):  # the second time too (after a first answer a kept answer may exist)
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(f"/nodecompat.v1.NodeService/{method}")(CORRUPT, timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            assert method in (err.value.details() or "") and "parse" in (err.value.details() or "")
    assert health_status(d.address, timeout=5) == "SERVING"


def test_a_corrupt_stream_request_is_invalid_argument(daemon_factory) -> None:  # noqa: F811
    d = daemon_factory("--host-root", str(HOST))
    with grpc.insecure_channel(d.address) as ch:
        call = ch.unary_stream("/nodecompat.v1.NodeService/WatchFeatures")(CORRUPT, timeout=20)
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert health_status(d.address, timeout=5) == "SERVING"
