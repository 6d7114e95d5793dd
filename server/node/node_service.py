"""NodeService: GetFeatures and ValidateImage over the daemon's cached probe round.

Thin on purpose: convert messages, call the core (feature cache, spec parser, rule engine, OCI client)
and map domain errors to status codes (server/errors.py).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from nodecompat import tracing, wire
from nodecompat.engine.limits import MAX_SPEC_BYTES
from nodecompat.oci.errors import RegistryError
from nodecompat.oci.policy import RegistryPolicy
from nodecompat.probes.probe_round import ProbeRound
from nodecompat.server import telemetry
from nodecompat.server.errors import registry_status, selection_problem, spec_error_status
from nodecompat.server.node.feature_cache import FeatureCache
from nodecompat.server.node.parse_cache import ParseCache
from nodecompat.v1 import features_pb2, inventory_pb2, node_pb2, node_pb2_grpc
from nodecompat.verdict_cache import VerdictCache, spec_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from nodecompat.engine.spec import Spec
    from nodecompat.oci.auth import RegistryAuth
    from nodecompat.oci.cache import SpecCache
    from nodecompat.probes.catalog import FeatureCatalog
    from nodecompat.server.node.feature_watch import FeatureWatchHub
    from nodecompat.server.runtime.runtime import Runtime

log = logging.getLogger(__name__)
_tracer = tracing.LazyTracer("nodecompat.server")  # OpenTelemetry only once imported (fast start)

MAX_PREFIXES = 64
DEFAULT_RPC_BUDGET = 60.0  # NFD's validate-node runs under a fixed 1-minute timeout


@dataclass
class RegistryOptions:
    """How the daemon reaches registries (credentials, CA) for ValidateImage by reference."""

    ca_file: str | None = None
    auth: RegistryAuth | None = None
    max_spec_bytes: int = MAX_SPEC_BYTES
    # The registry allow-list (--allowed-registries); the default allows no registry (docs/security.md).
    policy: RegistryPolicy = field(default_factory=RegistryPolicy)
    extra: dict[str, object] = field(default_factory=dict)


class NodeService(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, cache: FeatureCache, node_name: str, registry: RegistryOptions | None = None) -> None:
        self.cache = cache
        self.node_name = node_name
        self.registry = registry or RegistryOptions()
        self._spec_cache: SpecCache | None = None  # created on the first ValidateImage by reference: the
        self._spec_cache_lock = threading.Lock()  # OCI client (requests) is not imported at start-up
        # Building a round's response (kernel.config alone has thousands of entries) costs more than
        # the RPC itself, so the finished response is kept per (round, prefixes) for the round's life
        # (it is never mutated after it is built, so handing out the same message is safe).
        self._proto_cache: dict[tuple[int, tuple[str, ...]], features_pb2.GetFeaturesResponse] = {}
        self._proto_round: object | None = None
        self._proto_lock = threading.Lock()
        # Callers validate the same few specs over and over (one image, many calls); YAML parsing is
        # pure Python and dominates a call, so parsed specs are kept (never mutated), bounded by bytes.
        self._parse = ParseCache(self._parse_uncached)
        # Answers per (spec digest, tags, NFD mode, source) for the current probe round, as the bytes
        # sent (nodecompat/verdict_cache.py): a repeated question costs a lookup, not an evaluation.
        self.verdicts = VerdictCache()
        self._traced = telemetry.tracing_requested()

    @functools.cached_property
    def catalog(self) -> FeatureCatalog:
        """What this daemon's probes can report: names nobody provides, NFD's view (nfd_compat). Built on
        first use (the first evaluation), not at start-up."""
        from nodecompat.probes.catalog import FeatureCatalog

        return FeatureCatalog.from_probes(self.cache.runner.probes)

    # -- GetFeatures ------------------------------------------------------------------------------
    def GetFeatures(self, request: features_pb2.GetFeaturesRequest, context: grpc.ServicerContext):
        if len(request.prefixes) > MAX_PREFIXES or any(len(p) > 256 for p in request.prefixes):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_PREFIXES} prefixes of at most 256 characters (they key the response cache)",
            )
        budget = _remaining(context)
        try:
            rnd = self.cache.requested_refresh() if request.refresh else self.cache.current(timeout=budget)
        except RuntimeError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"re-probing failed, try again: {exc}")
        if rnd is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the first probe round has not finished yet; retry shortly")
        assert rnd is not None
        return self._response(rnd, tuple(request.prefixes))

    def _response(self, rnd: ProbeRound, prefixes: tuple[str, ...]) -> features_pb2.GetFeaturesResponse:
        with self._proto_lock:
            if self._proto_round is not rnd:
                self._proto_cache.clear()
                self._proto_round = rnd
            key = (id(rnd), prefixes)
            msg = self._proto_cache.get(key)
            if msg is None:
                if len(self._proto_cache) >= 32:
                    self._proto_cache.clear()
                ts = Timestamp()
                ts.FromDatetime(rnd.probed_at)
                msg = features_pb2.GetFeaturesResponse(
                    node_name=self.node_name,
                    features=wire.features_to_proto(rnd.features.filtered(prefixes)),
                    probes=[wire.status_to_proto(s) for s in rnd.statuses],
                    probed_at=ts,
                )
                self._proto_cache[key] = msg
            return msg

    # -- WatchFeatures (server/node/feature_watch.py) -------------------------------------------------------
    watch_hub: FeatureWatchHub | None = None
    # Or a function making the hub on first use (the daemon's: feature_watch is not imported at start-up).
    watch_hub_source: Callable[[], FeatureWatchHub] | None = None

    async def WatchFeatures(
        self, request: inventory_pb2.WatchFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inventory_pb2.WatchFeaturesResponse]:
        """Served on the grpc.aio runtime as a coroutine stream (no worker thread per watcher)."""
        hub = self.watch_hub
        if hub is None and self.watch_hub_source is not None:
            hub = self.watch_hub = self.watch_hub_source()
        if hub is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchFeatures is not enabled on this daemon")
            return
        async for msg in hub.watch(request, context):
            yield msg

    # -- ValidateImage ----------------------------------------------------------------------------
    def cached_answer(self, request: node_pb2.ValidateImageRequest) -> bytes | None:
        """The kept answer to an inline-spec ValidateImage on the current round, or None (then the full
        handler runs: it also answers every error). Never blocks, so the server may call it on its
        event loop; off while tracing, so that every answer's trace shows its `evaluate spec` span."""
        if self._traced:
            return None
        rnd = self.cache.current(timeout=0)
        return None if rnd is None else self._kept(request, rnd)

    def kept_answer(self, raw: bytes) -> bytes | None:
        """cached_answer for the request message as received (the runtime's fast path, called with the
        bytes before they are parsed). An answer served once is also kept under these bytes, for this
        round (VerdictCache charges the key's length): a repeated call then costs one lookup, without
        parsing the message or hashing the spec. None for bytes that do not parse (the runtime then
        fails the call as before) and whenever cached_answer would say None."""
        if self._traced:
            return None
        rnd = self.cache.current(timeout=0)
        if rnd is None:
            return None
        if len(raw) <= self.verdicts.max_entry_bytes:  # a longer key is never kept: no lookup (its hash)
            answer = self.verdicts.get(rnd, raw)
            if answer is not None:
                return answer
        try:
            request = node_pb2.ValidateImageRequest.FromString(raw)
        except DecodeError:
            return None
        answer = self._kept(request, rnd)
        if answer is not None:
            self.verdicts.put(rnd, raw, answer)
        return answer

    def _kept(self, request: node_pb2.ValidateImageRequest, rnd: ProbeRound) -> bytes | None:
        if request.WhichOneof("source") != "spec" or selection_problem(request.platform, request.tags):
            return None
        if len(request.spec) > self.registry.max_spec_bytes:
            # refused by the handler, never kept: not hashed on the event loop (a 14 MiB spec took ~30 ms
            # of it, twice per call, and Health waited behind it)
            return None
        key = spec_key(request.spec, request.tags, request.nfd_compat, request.nfd_json, (), (), self.node_name)
        return self.verdicts.get(rnd, key)

    def ValidateImage(self, request: node_pb2.ValidateImageRequest, context: grpc.ServicerContext):
        from nodecompat.engine.evaluate import EvaluationTimeout, evaluate
        from nodecompat.engine.spec import SpecError, SpecTimeout

        fast = self.cached_answer(request)
        if fast is not None:
            return fast
        source = request.WhichOneof("source")
        if source is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set either `image` (a reference) or `spec` (YAML/JSON)")
        problem = selection_problem(request.platform, request.tags)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        budget = _remaining(context)
        rnd = self.cache.current(timeout=budget)
        if rnd is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the first probe round has not finished yet; retry shortly")
        assert rnd is not None

        report_extra: dict[str, str] = {}
        warnings: list[str] = []
        origin = "inline spec"
        if source == "spec":
            text: str = request.spec
        else:
            with _tracer.start_as_current_span("fetch compatibility artifact") as span:
                span.set_attribute("nodecompat.image", request.image)
                fetched = self._fetch(request, context)
                span.set_attribute("nodecompat.artifact_digest", fetched.artifact_digest)
            text = fetched.text
            warnings.extend(fetched.warnings)
            origin = f"artifact {fetched.artifact_digest} of {fetched.reference}"
            report_extra = {
                "image": fetched.reference,
                "image_digest": fetched.image_digest,
                "artifact_digest": fetched.artifact_digest,
            }
        # a spec past the limit is refused by _parse below and never kept: not hashed, not looked up
        key = spec_key(
            text, request.tags, request.nfd_compat, request.nfd_json, tuple(report_extra.items()), tuple(warnings),
            self.node_name,
        ) if len(text) <= self.registry.max_spec_bytes else None
        cached = self.verdicts.get(rnd, key) if key is not None else None
        if cached is not None:
            if tracing.current_span_recording():  # the trace still shows where the answer came from
                with _tracer.start_as_current_span("evaluate spec") as span:
                    span.set_attribute("nodecompat.verdict_cache", "hit")
            return cached
        with _tracer.start_as_current_span("evaluate spec") as span:
            try:
                spec = self._parse(text, request.nfd_compat, deadline=time.monotonic() + _own_budget(context))
            except SpecError as exc:
                context.abort_with_status(spec_error_status(exc.problems, origin, context.invocation_metadata()))
                raise  # unreachable: abort raises
            except SpecTimeout:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed while reading the spec")
                raise
            try:
                verdict = evaluate(
                    spec, rnd.features, tags=list(request.tags), unknown=rnd.unknown_features(),
                    deadline=time.monotonic() + _own_budget(context),
                    catalog=self.catalog, nfd_view=request.nfd_compat, with_nfd_json=request.nfd_json,
                )
            except EvaluationTimeout:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed during evaluation")
                raise
            span.set_attribute("nodecompat.compatible", verdict.compatible)
            span.set_attribute("nodecompat.score", verdict.score)
        verdict.warnings = [*getattr(spec, "warnings", []), *warnings, *verdict.warnings]
        verdict.node_name = self.node_name
        for k, v in report_extra.items():
            setattr(verdict, k, v)
        resp = node_pb2.ValidateImageResponse(compatible=verdict.compatible, score=verdict.score)
        wire.fill(resp.report, verdict)
        data = resp.SerializeToString()
        if key is not None:
            self.verdicts.put(rnd, key, data)
        return data

    def _parse_uncached(self, text: str, nfd_compat: bool, deadline: float | None = None) -> Spec:
        from nodecompat.engine.spec import parse_spec  # imported on first use (fast start)

        return parse_spec(text, nfd_compat=nfd_compat, max_bytes=self.registry.max_spec_bytes, deadline=deadline)

    def _specs(self) -> SpecCache:
        with self._spec_cache_lock:
            if self._spec_cache is None:
                from nodecompat.oci.cache import SpecCache

                self._spec_cache = SpecCache()
            return self._spec_cache

    def _fetch(self, request: node_pb2.ValidateImageRequest, context: grpc.ServicerContext):

        try:
            return self._specs().fetch(
                request.image,
                platform=request.platform or None,
                plain_http=request.plain_http,
                auth=self.registry.auth,
                ca_file=self.registry.ca_file,
                timeout=_own_budget(context),
                max_bytes=self.registry.max_spec_bytes,
                policy=self.registry.policy,
            )
        except RegistryError as exc:
            context.abort(registry_status(exc.code), str(exc))
            raise


def add_to_runtime(service: NodeService, runtime: Runtime) -> None:
    """Serve NodeService on the runtime, except that ValidateImage may answer with ready serialized bytes
    (the verdict cache's), sent as they are."""
    runtime.add_servicer(
        service, node_pb2.DESCRIPTOR.services_by_name["NodeService"], {"ValidateImage": serialize_or_pass},
        fast_paths={"ValidateImage": service.kept_answer},
    )


def serialize_or_pass(response: object) -> bytes:
    """A response serializer that sends bytes as they are and serializes messages."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()  # type: ignore[attr-defined]


def _own_budget(context: grpc.ServicerContext) -> float:
    """The caller's remaining time less a margin, so that the daemon answers DEADLINE_EXCEEDED with its
    own explanation (which registry step, which budget) before the caller's deadline cuts the call."""
    left = _remaining(context)
    return max(0.001, left - min(0.25, left * 0.1))


def _remaining(context: grpc.ServicerContext) -> float:
    left = context.time_remaining()
    if left is None or left > DEFAULT_RPC_BUDGET:
        return DEFAULT_RPC_BUDGET
    return max(0.0, left)
