"""The lean WatchFeatures client (server/h2/watch.py) against real servers on real ports: a grpc.aio
server (gRPC core's HTTP/2) for what a daemon does, and a raw HTTP/2 server written with hyperframe/hpack for
what gRPC core will not do on demand (a GOAWAY that refuses the stream, a peer ignoring flow control). Each test
checks one guarantee and the grpc.StatusCode InventorySync's error handling relies on (gRPC core gives the same)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from hyperframe import frame as hf
from support_fleet import make_certs

from nodecompat.server.h2.call import H2Options, ssl_context
from nodecompat.server.h2.watch import H2Watch
from nodecompat.server.tls import ClientTls
from nodecompat.v1 import inventory_pb2

Resp = inventory_pb2.WatchFeaturesResponse
Handler = Callable[[inventory_pb2.WatchFeaturesRequest, Any], Any]


def _features(size: int = 0) -> Resp:
    msg = Resp()
    msg.features.node_name = "n1"
    msg.features.fingerprint = "fp"
    if size:
        msg.features.features.flags["cpu.cpuid"].elements.extend(f"F{i:07d}" for i in range(size // 10))
    return msg


@contextlib.asynccontextmanager
async def grpc_node(watch: Handler | None, creds: grpc.ServerCredentials | None = None) -> AsyncIterator[str]:
    """A grpc.aio server on 127.0.0.1 serving WatchFeatures with `watch` (None: no such method, an old daemon)."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
    if watch is not None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
            "WatchFeatures": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString,
                response_serializer=Resp.SerializeToString)}),))
    port = server.add_secure_port("127.0.0.1:0", creds) if creds else server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def raw_node(answer: Callable[[asyncio.StreamWriter], None]) -> AsyncIterator[str]:
    """A raw HTTP/2 server: reads the client's preface and request, writes SETTINGS and then `answer`'s frames."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(24)
        writer.write(hf.SettingsFrame(0).serialize())
        while True:
            head = await reader.readexactly(9)
            f, length = hf.Frame.parse_frame_header(memoryview(head))
            await reader.readexactly(length)
            if isinstance(f, hf.DataFrame) and "END_STREAM" in f.flags:
                break
        answer(writer)
        await writer.drain()
        with contextlib.suppress(Exception):
            await reader.read()  # until the client closes
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _headers(*pairs: tuple[str, str], end: bool = False) -> bytes:
    enc = hpack.Encoder()
    return hf.HeadersFrame(1, enc.encode(list(pairs)), flags=["END_HEADERS", *(["END_STREAM"] if end else [])]
                           ).serialize()


async def _read_all(address: str, opts: H2Options | None = None, limit: int = 3) -> list[Any]:
    call = H2Watch(address, inventory_pb2.WatchFeaturesRequest(heartbeat_seconds=1).SerializeToString(),
                   opts or H2Options(connect_timeout=5), Resp.FromString)
    got: list[Any] = []
    try:
        while len(got) < limit:
            msg = await asyncio.wait_for(call.read(), 20)
            got.append(msg)
            if msg is grpc.aio.EOF:
                break
    finally:
        await call.close()
    return got


def test_messages_then_eof_and_the_request_arrives() -> None:
    seen: list[inventory_pb2.WatchFeaturesRequest] = []

    async def watch(request: inventory_pb2.WatchFeaturesRequest, context: Any) -> Any:
        seen.append(request)
        yield _features(200_000)  # past the 64 KiB default window: needs our WINDOW_UPDATEs
        yield Resp(heartbeat=inventory_pb2.FeaturesHeartbeat(round_id=7))

    async def run() -> list[Any]:
        async with grpc_node(watch) as address:
            return await _read_all(address)

    got = asyncio.run(run())
    assert [m if m is grpc.aio.EOF else m.WhichOneof("item") for m in got] == ["features", "heartbeat", grpc.aio.EOF]
    assert got[0] == _features(200_000) and got[1].heartbeat.round_id == 7
    assert seen[0].heartbeat_seconds == 1


def test_an_oversize_message_is_refused_with_resource_exhausted() -> None:
    async def watch(request: Any, context: Any) -> Any:
        yield _features(300_000)

    async def run() -> None:
        async with grpc_node(watch) as address:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(address, H2Options(connect_timeout=5, max_message=100_000))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
            assert "larger than max" in (err.value.details() or "")

    asyncio.run(run())


@pytest.mark.parametrize("old_daemon", [False, True])
def test_a_trailers_only_error_carries_its_status_and_message(old_daemon: bool) -> None:
    async def watch(request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not ready: 50% done")
        yield Resp()  # never reached

    async def run() -> None:
        async with grpc_node(None if old_daemon else watch) as address:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(address)
        if old_daemon:  # a daemon from before WatchFeatures: InventorySync keeps asking it live
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, err.value
        else:
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                               "not ready: 50% done")

    asyncio.run(run())


def test_a_goaway_that_refuses_the_stream_is_unavailable() -> None:
    def answer(w: asyncio.StreamWriter) -> None:
        w.write(hf.GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"draining").serialize())

    async def run() -> None:
        async with raw_node(answer) as address:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(address)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in (err.value.details() or "")

    asyncio.run(run())


def test_a_graceful_goaway_lets_the_stream_end_with_its_trailers() -> None:
    def answer(w: asyncio.StreamWriter) -> None:
        w.write(_headers((":status", "200"), ("content-type", "application/grpc")))
        w.write(hf.GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())  # our stream 1 is still served
        body = Resp(heartbeat=inventory_pb2.FeaturesHeartbeat(round_id=3)).SerializeToString()
        w.write(hf.DataFrame(1, b"\0" + len(body).to_bytes(4, "big") + body).serialize())
        w.write(_headers(("grpc-status", "0"), end=True))

    async def run() -> list[Any]:
        async with raw_node(answer) as address:
            return await _read_all(address)

    got = asyncio.run(run())
    assert got[0].heartbeat.round_id == 3 and got[1] is grpc.aio.EOF


def test_a_header_block_that_never_ends_is_refused() -> None:
    """A HEADERS frame without END_HEADERS followed by empty CONTINUATIONs grows no buffer, and each frame counts
    as the peer being heard, so neither the header-list bound nor the keepalive would ever end the call (the only
    waits a watch stream has). gRPC core refuses it at once ("Too many zero length continuation frames without
    end_headers", INTERNAL); so must we, instead of parsing them for as long as the peer sends them."""

    def answer(w: asyncio.StreamWriter) -> None:
        enc = hpack.Encoder()
        w.write(hf.HeadersFrame(1, enc.encode([(":status", "200")])).serialize())  # no END_HEADERS
        w.write(hf.ContinuationFrame(1, b"").serialize() * 20_000)

    async def run() -> None:
        async with raw_node(answer) as address:
            with pytest.raises(grpc.aio.AioRpcError) as err:  # (without the check: UNAVAILABLE, keepalive)
                await _read_all(address, H2Options(connect_timeout=5, keepalive=0.5, keepalive_timeout=0.5))
            assert err.value.code() == grpc.StatusCode.INTERNAL and "CONTINUATION" in (err.value.details() or "")

    asyncio.run(run())


def test_a_peer_sending_past_the_window_is_refused() -> None:
    """Messages queued unread stop our WINDOW_UPDATEs once they fill the window; a peer that keeps sending
    (640 KiB here, the window is 256 KiB) is cut off instead of filling the aggregator's memory."""
    body = Resp(features=inventory_pb2.FeaturesChange(node_name="x" * 16_000)).SerializeToString()
    data = hf.DataFrame(1, b"\0" + len(body).to_bytes(4, "big") + body).serialize()

    def answer(w: asyncio.StreamWriter) -> None:
        w.write(_headers((":status", "200"), ("content-type", "application/grpc")))
        for _ in range(40):
            w.write(data)

    async def run() -> None:
        async with raw_node(answer) as address:
            call = H2Watch(address, b"", H2Options(connect_timeout=5), Resp.FromString)
            try:
                assert (await call.read()).features.node_name == "x" * 16_000
                await asyncio.sleep(1.0)  # not reading: everything the peer sends arrives meanwhile
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    while True:
                        await asyncio.wait_for(call.read(), 10)
            finally:
                await call.close()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "window" in (err.value.details() or "")

    asyncio.run(run())


def test_a_silent_peer_fails_the_keepalive_and_a_mute_one_the_connect_deadline() -> None:
    def answer(w: asyncio.StreamWriter) -> None:  # headers, then nothing: no message, no PING ACK
        w.write(_headers((":status", "200"), ("content-type", "application/grpc")))

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts TCP, never sends SETTINGS

    async def run() -> None:
        async with raw_node(answer) as address:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(address, H2Options(connect_timeout=5, keepalive=0.5, keepalive_timeout=0.5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "PING" in (err.value.details() or "")
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", H2Options(connect_timeout=0.5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "SETTINGS" in (err.value.details() or "")
        finally:
            server.close()

    asyncio.run(run())


def test_mutual_tls_with_the_server_tls_files(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "pki")
    creds = grpc.ssl_server_credentials([(certs.key.read_bytes(), certs.cert.read_bytes())],
                                        root_certificates=certs.ca.read_bytes(), require_client_auth=True)

    async def watch(request: Any, context: Any) -> Any:
        yield _features()

    async def run() -> None:
        async with grpc_node(watch, creds) as address:
            good = ssl_context(ClientTls(str(certs.ca), str(certs.cert), str(certs.key)))
            got = await _read_all(address, H2Options(ssl=good, connect_timeout=5), limit=1)
            assert got[0].features.node_name == "n1"
            anonymous = ssl_context(ClientTls(str(certs.ca)))  # no client certificate: refused by the node
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _read_all(address, H2Options(ssl=anonymous, connect_timeout=5), limit=1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            other_ca = make_certs(tmp_path / "other")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # a node this CA did not sign
                await _read_all(address, H2Options(ssl=ssl_context(ClientTls(str(other_ca.ca), str(other_ca.cert),
                                                                             str(other_ca.key))), connect_timeout=5))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "certificate" in (err.value.details() or "")

    asyncio.run(run())
    assert isinstance(ssl_context(ClientTls(str(certs.ca))), ssl.SSLContext)
