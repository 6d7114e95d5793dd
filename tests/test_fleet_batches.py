"""Live fan-out answers leave the aggregator in batches of what has arrived (issue 11: fan-out near the floor).

FanOut.run_batches hands the servicer every outcome ready when it asks (nothing waits to fill a batch), and
fleet_results.live_message turns one outcome into a `node` message and several into one `nodes` message whose
results are exactly what node_result() gives for each, marked LIVE. Real gRPC servers on real ports here:
one NodeService on 0.0.0.0 reached at several 127.0.0.x addresses, and one address nobody answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from support_daemon import free_port

from nodecompat.server.fleet.fanout import ChannelPool, FanOut, FanoutConfig, NodeOutcome
from nodecompat.server.fleet.fleet_results import contact, live_message, node_result
from nodecompat.server.h2.call import H2Options
from nodecompat.server.h2.unary import H2Channel
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, SOURCE_FILE, FleetNode, NodeInventory
from nodecompat.v1 import fleet_pb2, inventory_pb2, node_pb2, node_pb2_grpc, validation_pb2


def _response(compatible: bool, name: str = "reported") -> node_pb2.ValidateImageResponse:
    rule = validation_pb2.RuleVerdict(name="kernel", matched=compatible)
    verdict = validation_pb2.SetVerdict(
        passed=compatible, weight=1, description="k", rules_matched=int(compatible), rules_total=1, rules=[rule]
    )
    report = validation_pb2.ValidationReport(node_name=name, sets=[verdict])
    return node_pb2.ValidateImageResponse(compatible=compatible, score=1 if compatible else 0, report=report)


class _Node(node_pb2_grpc.NodeServiceServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def ValidateImage(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            self.calls += 1
        return _response(True)


@pytest.fixture(params=["grpc", "h2"])
def transport(request: pytest.FixtureRequest) -> str:
    """The pool's channels: grpc.aio's, or the lean HTTP/2 client's (server/h2/unary.py, --fanout-transport h2)."""
    return str(request.param)


def _h2(transport: str) -> H2Options | None:
    return H2Options() if transport == "h2" else None


def _closed(ch: Any) -> bool:
    return bool(ch.closed()) if isinstance(ch, H2Channel) else bool(ch._channel.closed())


@pytest.fixture
def node_server() -> Iterator[tuple[int, _Node]]:
    from concurrent.futures import ThreadPoolExecutor

    servicer = _Node()
    server = grpc.server(ThreadPoolExecutor(8), options=[("grpc.so_reuseport", 0)])
    node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("0.0.0.0:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0)


def test_one_outcome_is_a_node_message_and_several_are_one_batch_equal_to_node_result() -> None:
    outcomes = [
        NodeOutcome(FleetNode("a", "10.0.0.1:1", {"zone": "x"}), "OK", _response(True), "", 0.01, 1),
        NodeOutcome(FleetNode("b", "10.0.0.2:1"), "OK", _response(False), "", 0.02, 1),
        NodeOutcome(FleetNode("10.0.0.3:1", "10.0.0.3:1", {}, SOURCE_DNS), "OK", _response(True, "gpu-7"), "", 0.03, 2),
        NodeOutcome(FleetNode("d", "10.0.0.4:1", {}, SOURCE_FILE), "UNAVAILABLE", None, "connection refused", 0.2, 2),
    ]
    expected = []
    for o in outcomes:
        r = node_result(o)
        r.source = inventory_pb2.LIVE
        expected.append(r)
    assert expected[1].reasons and not expected[0].reasons  # reasons only for an incompatible verdict
    assert expected[2].node_name == "gpu-7"  # a DNS node is named by what it reported

    msg, added = live_message(outcomes)
    assert msg.WhichOneof("item") == "nodes"
    assert list(msg.nodes.nodes) == expected and list(added) == expected
    assert fleet_pb2.ValidateFleetResponse.FromString(msg.SerializeToString()) == msg

    one, added_one = live_message(outcomes[3:])
    assert one.WhichOneof("item") == "node" and one.node == expected[3] and list(added_one) == [expected[3]]


def test_contacts_of_a_batch_are_recorded_like_one_by_one() -> None:
    inv = NodeInventory()
    inv.record_contact("10.0.0.3:1", "SERVING", "gpu-7")
    outcomes = [
        NodeOutcome(FleetNode("a", "10.0.0.1:1"), "OK", _response(True, "a-host"), "", 0.01, 1),
        NodeOutcome(FleetNode("x", "10.0.0.3:1", {}, SOURCE_DNS), "UNAVAILABLE", None, "refused", 0.1, 2),
    ]
    assert [contact(o) for o in outcomes] == [("10.0.0.1:1", "SERVING", "a-host"), ("10.0.0.3:1", "UNAVAILABLE", "")]
    inv.record_contacts([contact(o) for o in outcomes])
    got = inv._contacts
    assert (got["10.0.0.1:1"].health, got["10.0.0.1:1"].reported_name) == ("SERVING", "a-host")
    # A failed call keeps the name the node reported before (as record_contact does).
    assert (got["10.0.0.3:1"].health, got["10.0.0.3:1"].reported_name) == ("UNAVAILABLE", "gpu-7")


def test_run_batches_accounts_for_every_node_within_the_limit(node_server: tuple[int, _Node], transport: str) -> None:
    port, servicer = node_server
    dead = free_port()  # nobody listens: UNAVAILABLE, retried once
    nodes = [FleetNode(f"n{i}", f"127.0.0.{1 + i}:{port}") for i in range(20)]
    nodes.append(FleetNode("dead", f"127.0.0.1:{dead}"))
    pool = ChannelPool(h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=8, node_timeout=5.0, retry_backoff=0.05))
    try:
        request = node_pb2.ValidateImageRequest(spec="x")
        for _ in range(2):  # cold, then over the pooled channels
            batches = list(fan.run_batches(nodes, request, time.monotonic() + 20, limit=3))
            assert all(1 <= len(b) <= 3 for b in batches)
            got = {o.node.name: o for b in batches for o in b}
            assert sum(len(b) for b in batches) == len(nodes) and set(got) == {n.name for n in nodes}
            assert all(got[n.name].status == "OK" and got[n.name].response is not None for n in nodes[:-1])
            assert (got["dead"].status, got["dead"].attempts) == ("UNAVAILABLE", 2)
        assert servicer.calls == 40
    finally:
        pool.close()


def test_run_batches_reports_what_the_deadline_cut_off(node_server: tuple[int, _Node], transport: str) -> None:
    """A node that never answers (a listener that accepts and says nothing) is reported DEADLINE_EXCEEDED."""
    import socket

    port, _ = node_server
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        nodes = [FleetNode("ok", f"127.0.0.1:{port}"), FleetNode("silent", f"127.0.0.1:{silent.getsockname()[1]}")]
        pool = ChannelPool(h2=_h2(transport))
        fan = FanOut(pool, FanoutConfig(concurrency=4, node_timeout=30.0))
        try:
            started = time.monotonic()
            batches = list(fan.run_batches(nodes, node_pb2.ValidateImageRequest(spec="x"), started + 1.0))
        finally:
            pool.close()
    finally:
        silent.close()
    got = {o.node.name: o for b in batches for o in b}
    assert got["ok"].status == "OK"
    assert got["silent"].status == "DEADLINE_EXCEEDED" and "fleet deadline" in got["silent"].error


def test_run_batches_lingers_for_a_burst_but_never_past_the_deadline(
    node_server: tuple[int, _Node], transport: str
) -> None:
    """A batch waits for the outcomes that follow its first one, yet the fleet deadline bounds that wait: a
    linger far longer than the deadline still hands every outcome over, and the fan-out ends, by then."""
    port, _ = node_server
    nodes = [FleetNode(f"n{i}", f"127.0.0.{1 + i}:{port}") for i in range(12)]
    pool = ChannelPool(h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=4, node_timeout=5.0))
    try:
        request = node_pb2.ValidateImageRequest(spec="x")
        list(fan.run_batches(nodes, request, time.monotonic() + 20, linger=0))  # connect first
        started = time.monotonic()
        batches = list(fan.run_batches(nodes, request, started + 2.0, linger=120.0))
        took = time.monotonic() - started
    finally:
        pool.close()
    assert sorted(o.node.name for b in batches for o in b) == sorted(n.name for n in nodes)
    assert all(o.status == "OK" for b in batches for o in b)
    assert took < 60  # bounded by the 2 s deadline, not by the 120 s linger (a wide margin: no timing claim)


def test_stream_from_another_loop_accounts_for_every_node(node_server: tuple[int, _Node], transport: str) -> None:
    """FanOut.stream() from a loop other than the pool's: every node once, including one nobody answers."""
    import asyncio

    port, _ = node_server
    nodes = [FleetNode(f"n{i}", f"127.0.0.{1 + i}:{port}") for i in range(6)]
    nodes.append(FleetNode("dead", f"127.0.0.1:{free_port()}"))
    pool = ChannelPool(h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=3, node_timeout=5.0, retry_backoff=0.05))

    async def collect() -> list[NodeOutcome]:
        return [o async for o in fan.stream(nodes, node_pb2.ValidateImageRequest(spec="x"), time.monotonic() + 20)]

    try:
        got = asyncio.run(collect())
    finally:
        pool.close()
    assert sorted(o.node.name for o in got) == sorted(n.name for n in nodes)
    by_name = {o.node.name: o for o in got}
    assert (by_name["dead"].status, by_name["dead"].attempts) == ("UNAVAILABLE", 2)
    assert all(by_name[n.name].status == "OK" for n in nodes[:-1])


def test_fan_out_past_the_pool_budget_reports_every_node_and_closes_the_extra_channels(
    node_server: tuple[int, _Node], transport: str,
) -> None:
    """A fleet larger than the pool's budget: every node answers, twice over; the pool keeps its first
    max_channels channels (the second fan-out finds them), and every channel made past the budget is closed
    once its attempt ended — including both attempts of a node nobody answers (retried once)."""
    import asyncio

    port, servicer = node_server

    class Counting(ChannelPool):
        released: list[grpc.aio.Channel] = []

        def release(self, entry):  # type: ignore[no-untyped-def]
            if entry.transient:
                self.released.append(entry.channel)
            super().release(entry)

    nodes = [FleetNode(f"n{i}", f"127.0.0.{1 + i}:{port}") for i in range(10)]
    nodes.append(FleetNode("dead", f"127.0.0.1:{free_port()}"))
    pool = Counting(max_channels=3, h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=4, node_timeout=5.0, retry_backoff=0.05))
    try:
        request = node_pb2.ValidateImageRequest(spec="x")
        pooled = None
        for _ in range(2):
            got = {o.node.name: o for o in fan.run(nodes, request, time.monotonic() + 20)}
            assert set(got) == {n.name for n in nodes}
            assert all(got[n.name].status == "OK" for n in nodes[:-1])
            assert (got["dead"].status, got["dead"].attempts) == ("UNAVAILABLE", 2)
            assert len(pool) == 3
            if pooled is None:
                pooled = {a: pool.channel(a) for a in pool.addresses()}
            else:
                assert {a: pool.channel(a) for a in pool.addresses()} == pooled  # the same channels, kept
        assert servicer.calls == 20
        # 7 of the 10 answering nodes and both attempts of the dead one per fan-out went through channels
        # of their own, each closed when its attempt ended.
        assert len(Counting.released) == 2 * (7 + 2)

        async def closed() -> bool:
            for _ in range(100):  # the closes run as tasks on the pool's loop: wait for them, bounded
                if all(_closed(ch) for ch in Counting.released):
                    return True
                await asyncio.sleep(0.05)
            return False

        assert pool.call(closed())
    finally:
        pool.close()


def test_pool_on_a_loop_of_the_callers_runs_the_fan_out_there_and_leaves_the_loop_running(
    node_server: tuple[int, _Node], transport: str,
) -> None:
    """ChannelPool(loop=...) (the aggregator passes its server's loop): the fan-out's calls run on that loop,
    no thread of the pool's own is started, a blocking call() from that loop is refused instead of
    deadlocking, and close() closes the channels but leaves the loop running."""
    import asyncio

    loop, runner, pool, fan, nodes = _pool_on_a_callers_loop(node_server[0], 4, transport)
    try:
        got = list(fan.run(nodes, node_pb2.ValidateImageRequest(spec="x"), time.monotonic() + 20))
        assert sorted(o.node.name for o in got) == ["n0", "n1", "n2", "n3"] and {o.status for o in got} == {"OK"}
        assert pool.loop is loop and not any(t.name == "fanout-loop" for t in threading.enumerate())

        async def from_the_loop() -> str:
            async def nothing() -> None:
                return None

            coro = nothing()
            try:
                pool.call(coro)
            except RuntimeError as exc:
                coro.close()
                return str(exc)
            return "no error"

        assert "deadlock" in asyncio.run_coroutine_threadsafe(from_the_loop(), loop).result(10)
        channels = [pool.channel(n.address) for n in nodes]
        pool.close()
        assert loop.is_running() and len(pool) == 0
        assert asyncio.run_coroutine_threadsafe(_all_closed(channels), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()


def test_pool_on_a_loop_that_stopped_first_still_closes_its_channels(
    node_server: tuple[int, _Node], transport: str
) -> None:
    """The aggregator stops its server (and loop) before the pool: close() then closes the channels at once."""
    loop, runner, pool, fan, nodes = _pool_on_a_callers_loop(node_server[0], 3, transport)
    try:
        assert {o.status for o in fan.run(nodes, node_pb2.ValidateImageRequest(spec="x"), time.monotonic() + 20)} == {
            "OK"
        }
        channels = [pool.channel(n.address) for n in nodes]
        # h2: the connections' sockets (nobody runs the loop's deferred close any more: closed at once, or leaked)
        sockets = [ch.conn.transport.get_extra_info("socket") for ch in channels if isinstance(ch, H2Channel)]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
    pool.close()
    assert len(pool) == 0 and all(_closed(ch) for ch in channels)
    assert all(sock.fileno() == -1 for sock in sockets) and len(sockets) == (3 if transport == "h2" else 0)
    loop.close()


def _pool_on_a_callers_loop(
    port: int, count: int, transport: str
) -> tuple[Any, threading.Thread, ChannelPool, FanOut, list[FleetNode]]:
    """A running event loop of the caller's ("callers-loop" thread), a ChannelPool and FanOut on it, and
    `count` nodes at 127.0.0.1..count:port. The caller stops the loop and closes the pool, in its own order."""
    import asyncio

    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="callers-loop", daemon=True)
    runner.start()
    pool = ChannelPool(loop=loop, h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=2, node_timeout=5.0))
    return loop, runner, pool, fan, [FleetNode(f"n{i}", f"127.0.0.{1 + i}:{port}") for i in range(count)]


async def _all_closed(channels: list[grpc.aio.Channel]) -> bool:
    import asyncio

    for _ in range(100):  # closes run as tasks on the loop: wait for them, bounded
        if all(_closed(ch) for ch in channels):
            return True
        await asyncio.sleep(0.05)
    return False


def test_pool_closes_channels_idle_past_the_bound_but_not_those_in_use(
    node_server: tuple[int, _Node], transport: str
) -> None:
    """The sweep closes a channel unused for idle_close s; one held by a call in progress stays; a closed
    address gets a new channel on its next use, and a fan-out over it still answers."""
    port, _ = node_server
    a, b = f"127.0.0.1:{port}", f"127.0.0.2:{port}"
    pool = ChannelPool(idle_close=0.2, h2=_h2(transport))
    fan = FanOut(pool, FanoutConfig(concurrency=4, node_timeout=5.0))
    try:
        with pool.in_use([b]):
            first = [
                o.status
                for o in fan.run(
                    [FleetNode("a", a), FleetNode("b", b)],
                    node_pb2.ValidateImageRequest(spec="x"),
                    time.monotonic() + 10,
                )
            ]
            assert first == ["OK", "OK"] and pool.addresses() == {a, b}
            old = pool.channel(a)
            for _ in range(100):  # the sweep runs every idle_close / 2 s; wait for it, bounded
                if pool.addresses() == {b}:
                    break
                time.sleep(0.05)
            assert pool.addresses() == {b}  # a: idle past the bound; b: in use
        assert pool.channel(a) is not old
        again = list(fan.run([FleetNode("a", a)], node_pb2.ValidateImageRequest(spec="x"), time.monotonic() + 10))
        assert [o.status for o in again] == ["OK"]
        left = len(pool)  # a, and b unless the sweep took it meanwhile
        assert left >= 1 and pool.close_idle(0) == left and len(pool) == 0  # nothing in flight: all go at once
    finally:
        pool.close()


def test_pool_idle_bound_is_checked() -> None:
    with pytest.raises(ValueError, match="idle_close"):
        ChannelPool(idle_close=0)


def test_inventory_addresses_are_the_members_addresses(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """addresses() (what a prune keeps) equals the addresses nodes() lists: file, registered and DNS members,
    a lapsed lease gone from both."""
    now = [1000.0]
    nodes_file = tmp_path / "nodes.yaml"
    nodes_file.write_text("- {name: pinned, address: '10.0.0.2:5'}\n")
    inv = NodeInventory(
        nodes_file=nodes_file,
        dns=[("daemons.svc", 5)],
        clock=lambda: now[0],
        resolver=lambda host, port: ["10.0.0.1:5", "10.0.0.2:5"],
    )
    inv.load()
    inv.resolve_dns()
    inv.register("reg", "10.0.0.9:5", {"zone": "a"}, 10)
    inv.register("short", "10.0.0.8:5", {}, 1)
    assert (
        inv.addresses() == {n.address for n in inv.nodes()} == {"10.0.0.1:5", "10.0.0.2:5", "10.0.0.8:5", "10.0.0.9:5"}
    )
    assert [n.name for n in inv.nodes({"zone": "a"})] == ["reg"]
    now[0] += 5  # "short" lapses
    assert inv.addresses() == {n.address for n in inv.nodes()} == {"10.0.0.1:5", "10.0.0.2:5", "10.0.0.9:5"}
