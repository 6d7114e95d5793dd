"""The daemon's verdict cache: an answer served from the cache is byte for byte the answer a daemon
without the cache computes, before and after a refresh that changes the node's features; the cache
is bounded in bytes and never serves an answer of another probe round."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from nodecompat.server.node.daemon import DaemonConfig, NodeDaemon
from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc
from nodecompat.verdict_cache import ENTRY_OVERHEAD, VerdictCache, spec_key

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
SPEC = """
version: v1alpha1
compatibilities:
- description: new kernel
  weight: 5
  rules:
  - name: kernel 6+
    matchFeatures:
    - feature: kernel.version
      matchExpressions:
        major: {op: Ge, value: ["6"]}
- description: anything
  weight: 1
  rules:
  - name: cpu
    matchFeatures:
    - feature: cpu.cpuid
      matchName: {op: InRegexp, value: ["^SSE"]}
"""


def _daemon(root: Path, cache: bool) -> NodeDaemon:
    d = NodeDaemon(DaemonConfig(listen="127.0.0.1:0", host_root=str(root), node_name="node-a", hotplug=False))
    if not cache:
        d.service.verdicts = VerdictCache(max_bytes=0)
    d.start()
    assert d.cache.current(timeout=30) is not None
    return d


def _raw_validate(address: str) -> bytes:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary("/nodecompat.v1.NodeService/ValidateImage")  # bytes in, bytes out
        return call(node_pb2.ValidateImageRequest(spec=SPEC).SerializeToString(), timeout=30)  # type: ignore[no-any-return]


def _refresh(address: str) -> None:
    with grpc.insecure_channel(address) as ch:
        node_pb2_grpc.NodeServiceStub(ch).GetFeatures(features_pb2.GetFeaturesRequest(refresh=True), timeout=30)


def test_cached_answers_equal_fresh_ones_across_a_refresh_that_changes_the_node(tmp_path: Path) -> None:
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / "plain-vm", root, symlinks=True)
    cached, fresh = _daemon(root, cache=True), _daemon(root, cache=False)
    try:
        a, b = f"127.0.0.1:{cached.port}", f"127.0.0.1:{fresh.port}"
        first = _raw_validate(a)
        hits = cached.service.verdicts.hits
        again = _raw_validate(a)
        assert cached.service.verdicts.hits == hits + 1  # the second answer came from the cache
        assert again == first == _raw_validate(b)
        before = node_pb2.ValidateImageResponse.FromString(first)
        assert before.compatible and before.score == 5  # the fixture's kernel is 6.x

        (root / "proc/sys/kernel/osrelease").write_text("5.4.0-150-generic\n")
        _refresh(a)
        _refresh(b)
        after_first = _raw_validate(a)
        after_cached = _raw_validate(a)
        after_by_bytes = _raw_validate(a)  # the third: kept under the request's bytes by the second
        rnd = cached.cache.current(timeout=0)
        assert cached.service.verdicts.get(rnd, node_pb2.ValidateImageRequest(spec=SPEC).SerializeToString())
        assert after_by_bytes == after_cached == after_first == _raw_validate(b)
        after = node_pb2.ValidateImageResponse.FromString(after_cached)
        assert after.score == 1 and not after.report.sets[0].passed  # the change is seen, not the old answer
        assert after_cached != first
    finally:
        cached.stop(grace=0)
        fresh.stop(grace=0)


def test_answers_kept_by_request_bytes_follow_the_request(tmp_path: Path) -> None:
    """The fast path's answers kept under the request message's bytes: a message that differs in any field
    (tags, NFD mode) is a different question and gets its own answer, one that encodes the same request
    differently (fields in another order) gets the same answer, and bytes that do not parse are refused
    as before the fast path read them (grpc's deserializer error, UNKNOWN), the daemon answering on."""
    d = _daemon(FIXTURES / "plain-vm", cache=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{d.port}") as ch:
            call = ch.unary_unary("/nodecompat.v1.NodeService/ValidateImage")
            plain = node_pb2.ValidateImageRequest(spec=SPEC).SerializeToString()
            nfd = node_pb2.ValidateImageRequest(spec=SPEC, nfd_compat=True).SerializeToString()
            tagged = node_pb2.ValidateImageRequest(spec=SPEC, tags=["x"]).SerializeToString()
            answers = {}
            for raw in (plain, nfd, tagged) * 3:  # third time round each is served by its bytes
                answers.setdefault(raw, set()).add(call(raw, timeout=30))
            assert all(len(v) == 1 for v in answers.values())
            assert len({next(iter(v)) for v in answers.values()}) == 3  # three questions, three answers
            # nfd_compat (field 5) before spec (field 2): same message, other bytes
            spec_field = node_pb2.ValidateImageRequest(spec=SPEC).SerializeToString()
            reordered = node_pb2.ValidateImageRequest(nfd_compat=True).SerializeToString() + spec_field
            assert reordered != nfd
            for _ in range(3):
                assert call(reordered, timeout=30) in answers[nfd]
            with pytest.raises(grpc.RpcError) as bad:
                call(b"\xff\xff\xff", timeout=30)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the caller's error (runtime parses)
            assert call(plain, timeout=30) in answers[plain]
    finally:
        d.stop(grace=0)


def test_cache_is_bounded_in_bytes_and_kept_per_round() -> None:
    cache = VerdictCache(max_bytes=3 * (1000 + ENTRY_OVERHEAD), max_entry_bytes=2000)
    r1, r2 = object(), object()
    keys = [spec_key(f"spec {i}", ["t"], False) for i in range(5)]
    for k in keys:
        cache.put(r1, k, b"x" * 1000)
    assert len(cache) == 3 and cache.size <= cache.max_bytes
    assert cache.get(r1, keys[0]) is None and cache.get(r1, keys[4]) == b"x" * 1000  # oldest went first
    cache.put(r1, keys[1], b"y" * 5000)  # over the per-entry limit: not kept
    assert cache.get(r1, keys[1]) is None
    assert cache.get(r2, keys[4]) is None and len(cache) == 0  # another round: nothing of r1 is served
    raw = b"r" * 500  # a bytes key (a request message as received) is charged its length too
    cache.put(r2, raw, b"z" * 1000)
    assert cache.size == 500 + 1000 + ENTRY_OVERHEAD and cache.get(r2, raw) == b"z" * 1000
    cache.put(r2, b"s" * 500, b"z" * 1000)
    cache.put(r2, keys[0], b"z" * 1000)  # 2 x 1,756 + 1,256 > 3 x 1,256: the oldest (raw) went
    assert cache.get(r2, raw) is None and cache.size <= cache.max_bytes and len(cache) == 2
    assert spec_key("s", ["a", "b"], False) != spec_key("s", ["b", "a"], False)  # tag order shows in warnings
    assert spec_key("s", [], True) != spec_key("s", [], False)


def test_an_oversized_spec_is_refused_without_a_cache_lookup(tmp_path: Path) -> None:
    """A spec past the daemon's limit can never have a kept answer: it is refused (INVALID_ARGUMENT) without
    being hashed and looked up in the verdict cache, on the event loop (the fast path) or in the worker.
    Before, a 14 MiB spec was looked up three times per call (its request bytes, then its digest twice),
    and 8 callers sending such specs held Health at ~200-270 ms median against ~30-55 ms for messages
    as large that are not specs."""
    root = tmp_path / "host"
    shutil.copytree(FIXTURES / "plain-vm", root, symlinks=True)
    d = _daemon(root, cache=True)
    try:
        big = node_pb2.ValidateImageRequest(spec="#" + "x" * d.service.registry.max_spec_bytes)
        looked_up = d.service.verdicts.hits + d.service.verdicts.misses
        with grpc.insecure_channel(f"127.0.0.1:{d.port}") as ch:
            stub = node_pb2_grpc.NodeServiceStub(ch)
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as err:
                    stub.ValidateImage(big, timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert d.service.verdicts.hits + d.service.verdicts.misses == looked_up
        assert _raw_validate(f"127.0.0.1:{d.port}")  # the daemon answers on
    finally:
        d.stop(grace=0)
