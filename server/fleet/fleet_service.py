"""FleetService: the aggregator's servicer (ValidateFleet, WatchFleet, WhatIf, ListNodes, node registration).

ValidateFleet resolves the image's compatibility artifact once (the registry is hit once per call, not
once per node), checks the spec, tags and platform once (one clear INVALID_ARGUMENT instead of N
identical node errors, and a malformed platform is refused even with an inline spec, which ignores it),
sends the spec inline to the selected daemons through server/fleet/fanout.py, streams NodeResults as they
complete (one per message, or together when several completed since the last message), and ends with
one FleetSummary that is never later than the deadline:
min(the request's timeout or the default, the caller's own gRPC deadline minus a small margin).
Like the node service this is a thin edge: membership is server/inventory/fleet_nodes.py, fan-out is
server/fleet/fanout.py, message conversion is server/fleet/fleet_results.py, and verdicts come from the daemons.
The process object (config, start/stop) is server/fleet/aggregator.py.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry import trace

from nodecompat.engine.spec import Spec, SpecError, SpecTimeout, parse_spec
from nodecompat.fleet.store import FeatureStore, spec_key
from nodecompat.fleet.volatile import reads_volatile
from nodecompat.oci.cache import SpecCache
from nodecompat.oci.errors import RegistryError
from nodecompat.server.errors import registry_status, selection_problem, spec_error_status
from nodecompat.server.fleet import list_pages
from nodecompat.server.fleet.fanout import FanOut
from nodecompat.server.fleet.fleet_bytes import NodeBytes, Ranking, summary_message
from nodecompat.server.fleet.fleet_results import add_node_info, contact, deadline_margin, fleet_summary, live_message
from nodecompat.server.fleet.fleet_watch import Aborted, FleetWatchHub, WatchSpec, watch_spec
from nodecompat.server.fleet.whatif_service import what_if
from nodecompat.server.inventory.fleet_nodes import (
    AddressInUse,
    FleetNode,
    NameInUse,
    NodeInventory,
    NodeView,
    NotRegistrant,
    RegistrationsFull,
)
from nodecompat.server.inventory.inventory_answers import Plan, finish_summary, plan
from nodecompat.server.inventory.inventory_push import PushedNodes, push_problem
from nodecompat.server.inventory.registration_auth import Caller, RegistrationDenied, RegistrationPolicy, caller_of
from nodecompat.server.inventory.registration_store import StoreUnavailable
from nodecompat.server.node.node_service import RegistryOptions
from nodecompat.server.runtime.runtime_context import AbortRpc
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, inventory_pb2, node_pb2

# RegisterNode's refusals -> (gRPC status, hint appended to the message), first match wins.
_REGISTER_STATUS: tuple[tuple[type[Exception], grpc.StatusCode, str], ...] = (
    (NotRegistrant, grpc.StatusCode.PERMISSION_DENIED, ""),
    (NameInUse, grpc.StatusCode.ALREADY_EXISTS, ""),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, ""),
    (AddressInUse, grpc.StatusCode.ALREADY_EXISTS, ""),
    (RegistrationsFull, grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE, "; retry"),
)
_REGISTER_ERRORS = tuple(t for t, _, _ in _REGISTER_STATUS)

tracer = trace.get_tracer(__name__)

FLEET_SERVICE = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name
MAX_TIMEOUT = 3600.0
HEALTH_STALE_AFTER = 10.0  # ListNodes health-checks nodes not heard from for this long


@dataclass
class AggregatorOptions:
    default_timeout: float = 30.0
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    health_timeout: float = 1.0
    # Who may RegisterNode/DeregisterNode (server/inventory/registration_auth.py); the default: nobody.
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)


class FleetService(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, inventory: NodeInventory, fanout: FanOut, options: AggregatorOptions | None = None) -> None:
        self.inventory = inventory
        self.fanout = fanout
        self.options = options or AggregatorOptions()
        self._spec_cache: SpecCache | None = None
        self._spec_cache_lock = threading.Lock()
        # The live inventory (issue 12): set by AggregatorDaemon unless --no-inventory.
        self.store: FeatureStore | None = None
        self.fleet_watch: FleetWatchHub | None = None
        # Registrations announcing their feature state (push model, server/inventory/inventory_push.py); None: ignored.
        self.push: PushedNodes | None = None
        # Per node the serialized fields of its NodeResult that are its own (server/fleet/fleet_bytes.py), bounded.
        self.node_bytes = NodeBytes()

    # -- ValidateFleet -----------------------------------------------------------------------------
    def ValidateFleet(
        self, request: fleet_pb2.ValidateFleetRequest, context: grpc.ServicerContext
    ) -> Iterator[fleet_pb2.ValidateFleetResponse | bytes]:
        """The answer's messages; those answered from the inventory node by node and the summary already
        serialized (server/fleet/fleet_bytes.py), sent as they are (aggregator.py: serialize_or_pass)."""
        started = time.monotonic()
        source = request.WhichOneof("source")
        if source is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "set either `image` (a reference) or `spec` (YAML/JSON)")
        t = request.timeout_seconds
        if math.isnan(t) or t < 0 or t > MAX_TIMEOUT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"timeout_seconds must be in [0, {MAX_TIMEOUT:g}], got {t}")
        self._check_request(request, context)
        budget = t or self.options.default_timeout
        left = context.time_remaining()
        if left is not None:
            budget = min(budget, left - deadline_margin(left))
        deadline = started + max(0.0, budget)

        span = tracer.start_span(
            "fleet.validate",
            attributes={"nodecompat.fleet.source": source or "", "nodecompat.fleet.budget_s": budget},
        )
        parent = trace.set_span_in_context(span)
        try:
            with trace.use_span(span, end_on_exit=False):
                spec_text, image_digest, artifact_digest = self._resolve(request, context, deadline)
                spec = self._check_spec(spec_text, context, request.image or "inline spec", request.nfd_compat)
            nodes = self.inventory.nodes(dict(request.selector))
            span.set_attribute("nodecompat.fleet.nodes", len(nodes))
            node_request = node_pb2.ValidateImageRequest(
                spec=spec_text, tags=list(request.tags), nfd_compat=request.nfd_compat
            )
            held = self._from_inventory(request, context, nodes, spec, spec_text)
            # one NodeResult per node: the summary's ranking (inventory nodes added by plan(), live ones here)
            ranking = held.ranking if held is not None else Ranking(keep=not request.grouped_results)
            if held is not None:
                yield from held.batches  # serialized (server/fleet/fleet_bytes.py) or NodeGroups messages
            if held is None or held.live:
                self.prune_channels()
            live_reports: list[Any] = []
            live_count = 0
            for batch in self.fanout.run_batches(held.live if held else nodes, node_request, deadline, parent):
                self.inventory.record_contacts([contact(o) for o in batch])
                live_reports.extend(o.response.report for o in batch if o.response is not None and o.status == "OK")
                message, added = live_message(batch)
                ranking.add_live(added)
                live_count += len(added)
                yield message
            summary = fleet_summary(held, ranking, image_digest, artifact_digest, time.monotonic() - started)
            finish_summary(summary, held, live_reports, live_count)
            span.set_attribute("nodecompat.fleet.compatible", summary.compatible)
            yield summary_message(summary, ranking)
        finally:
            span.end()

    # -- WatchFleet (server/fleet/fleet_watch.py) ------------------------------------------------------------
    async def WatchFleet(
        self, request: inventory_pb2.WatchFleetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inventory_pb2.WatchFleetResponse]:
        """A coroutine stream on the grpc.aio runtime; events are written by FleetWatchHub."""
        if False:  # pragma: no cover - an async generator; messages go through context.write
            yield inventory_pb2.WatchFleetResponse()
        if self.fleet_watch is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "WatchFleet needs the inventory (aggregator "
                                "started with --no-inventory)")
            return
        hub = self.fleet_watch
        await hub.admit(context)  # the watcher cap holds while specs are resolved too
        try:
            try:
                ws = await asyncio.get_running_loop().run_in_executor(hub.resolver, self._watch_spec, request)
            except Aborted as exc:
                await context.abort(exc.code, exc.details)
                return
            await hub.watch(ws, context)
        finally:
            hub.release()

    def _watch_spec(self, request: inventory_pb2.WatchFleetRequest) -> WatchSpec:
        return watch_spec(request, self._check_request, self._resolve, self._check_spec, self.options.default_timeout)

    def WhatIf(self, request: inventory_pb2.WhatIfRequest, context: grpc.ServicerContext) -> Any:
        return what_if(request, context, self.store, self.inventory.nodes, self._resolve, self._check_spec,
                       self.options.default_timeout)

    def _check_request(self, request: fleet_pb2.ValidateFleetRequest, context: grpc.ServicerContext) -> None:
        """Refuse what every daemon would refuse (or, for an inline spec, silently ignore), once, up front."""
        problem = selection_problem(request.platform, request.tags)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    def _resolve(
        self, request: fleet_pb2.ValidateFleetRequest, context: grpc.ServicerContext, deadline: float
    ) -> tuple[str, str, str]:
        if request.WhichOneof("source") == "spec":
            return request.spec, "", ""
        with self._spec_cache_lock:
            if self._spec_cache is None:
                self._spec_cache = SpecCache()
            cache = self._spec_cache
        reg = self.options.registry
        try:
            fetched = cache.fetch(
                request.image,
                platform=request.platform or None,
                plain_http=request.plain_http,
                auth=reg.auth,
                ca_file=reg.ca_file,
                timeout=max(0.05, deadline - time.monotonic()),
                max_bytes=reg.max_spec_bytes,
                policy=reg.policy,
            )
        except RegistryError as exc:
            context.abort(registry_status(exc.code), f"{request.image}: {exc}")
            raise
        return fetched.text, fetched.image_digest, fetched.artifact_digest

    def _check_spec(self, text: str, context: grpc.ServicerContext, origin: str, nfd_compat: bool) -> Spec:
        left = context.time_remaining()
        deadline = None if left is None else time.monotonic() + left
        try:
            return parse_spec(
                text, nfd_compat=nfd_compat, max_bytes=self.options.registry.max_spec_bytes, deadline=deadline
            )
        except SpecError as exc:
            context.abort_with_status(spec_error_status(exc.problems, origin, context.invocation_metadata()))
            raise
        except SpecTimeout:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed while reading the spec")
            raise

    def _from_inventory(
        self, request: fleet_pb2.ValidateFleetRequest, context: grpc.ServicerContext, nodes: list[FleetNode],
        spec: Spec, spec_text: str,
    ) -> Plan | None:
        """The nodes answered from the inventory (server/inventory/inventory_answers.py); None: all live (no
        inventory, source LIVE asked, or a spec reading a volatile usage value the inventory does not keep)."""
        staleness = request.max_staleness_seconds
        if math.isnan(staleness) or staleness < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"max_staleness_seconds must be >= 0, got {staleness}")
        if self.store is None or request.answer_source == inventory_pb2.LIVE or reads_volatile(spec):
            return None  # a usage value (nodecompat/fleet/volatile.py) is not in any stored set: every node live
        return plan(self.store, nodes, spec, spec_key(spec_text, request.nfd_compat), list(request.tags),
                    staleness, request.nfd_compat, grouped=request.grouped_results, node_bytes=self.node_bytes)

    # -- ListNodes ---------------------------------------------------------------------------------
    def ListNodes(
        self, request: fleet_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ListNodesResponse:
        selector = dict(request.selector)
        self.prune_channels()
        try:
            views, next_token = list_pages.page(self.inventory.views(selector), request.page_size, request.page_token)
        except list_pages.PageTokenError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ListNodes: {exc}")
            raise
        if self._refresh_health(views, context):  # only this page's nodes are checked
            fresh = {v.node.address: v for v in self.inventory.views(selector)}
            views = [fresh.get(v.node.address, v) for v in views]
        out = fleet_pb2.ListNodesResponse(next_page_token=next_token)
        for view in views:
            add_node_info(out, view)
        return out

    def prune_channels(self) -> None:
        """Close the pooled channels of nodes that left the fleet (a long-running aggregator must not keep
        a connection to every address it ever saw); channels a call in progress uses are kept."""
        self.fanout.pool.prune(self.inventory.addresses())

    def _refresh_health(self, views: list[NodeView], context: grpc.ServicerContext) -> bool:
        """Health-check, concurrently and briefly, the nodes with no recent contact or not SERVING at the
        last one (a node found down is looked at again rather than reported down for HEALTH_STALE_AFTER)."""
        now = time.time()
        stale = [
            v.node.address
            for v in views
            if v.last_contact is None or now - v.last_contact.timestamp() > HEALTH_STALE_AFTER or v.health != "SERVING"
        ]
        if not stale:
            return False
        left = context.time_remaining()
        timeout = self.options.health_timeout if left is None else min(self.options.health_timeout, left / 2)
        self.check_health(stale, timeout)
        return True

    def check_health(self, stale: list[str], timeout: float) -> None:
        """grpc.health.v1 Check of each address, concurrently, each within `timeout` seconds; the status
        (or the failed call's code) is recorded as the node's health."""
        for address, health in self.fanout.pool.check_health(stale, timeout).items():
            self.inventory.record_contact(address, health)

    # -- registration ------------------------------------------------------------------------------
    def RegisterNode(
        self, request: fleet_pb2.RegisterNodeRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.RegisterNodeResponse:
        try:
            answer = self._register(request, caller_of(context), wait=True)
        except AbortRpc as exc:
            context.abort(exc.code, exc.details)
            raise
        assert answer is not None
        return answer

    def register_on_loop(
        self, request: fleet_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.RegisterNodeResponse | None:
        """RegisterNode answered on the server's event loop (server/runtime/runtime.py call fast path: no worker, no
        admission slot), with RegisterNode's checks, refusals (AbortRpc) and effects; None, with nothing
        changed, when the lease table would wait (the shared store of replicas, a held lock, a changed
        nodes file: NodeInventory.register_now), and the call takes RegisterNode in a worker."""
        return self._register(request, caller_of(context), wait=False)

    def _register(self, request: fleet_pb2.RegisterNodeRequest, caller: Caller,
                  wait: bool) -> fleet_pb2.RegisterNodeResponse | None:
        """RegisterNode's work; AbortRpc with the status of a refusal; None only when not `wait`ing."""
        principal = self._principal(caller, request.name, "RegisterNode")
        if problem := push_problem(request):
            raise AbortRpc(grpc.StatusCode.INVALID_ARGUMENT, f"RegisterNode {request.name[:80]!r}: {problem}")
        labels = dict(request.labels)
        register = self.inventory.register if wait else self.inventory.register_now
        try:
            ttl = register(request.name, request.address, labels, request.ttl_seconds, principal)
        except _REGISTER_ERRORS as exc:
            code, hint = next((c, h) for t, c, h in _REGISTER_STATUS if isinstance(exc, t))
            raise AbortRpc(code, f"RegisterNode {request.name[:80]!r}: {exc}{hint}") from None
        if ttl is None:
            return None
        if self.push is not None:
            self.push.announce(request.address, request.name, labels, ttl, request)
        return fleet_pb2.RegisterNodeResponse(ttl_seconds=ttl)

    def DeregisterNode(
        self, request: fleet_pb2.DeregisterNodeRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.DeregisterNodeResponse:
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "DeregisterNode: `name` is required")
        principal = self._registrant(request.name, context, "DeregisterNode")
        try:
            self.inventory.deregister(request.name, principal)
        except NotRegistrant as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"DeregisterNode: {exc}")
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"DeregisterNode: {exc}; retry")
        return fleet_pb2.DeregisterNodeResponse()

    def _registrant(self, name: str, context: grpc.ServicerContext, rpc: str) -> str:
        """The principal a lease of `name` is bound to; aborts PERMISSION_DENIED/UNAUTHENTICATED."""
        try:
            return self._principal(caller_of(context), name, rpc)
        except AbortRpc as exc:
            context.abort(exc.code, exc.details)
            raise

    def _principal(self, caller: Caller, name: str, rpc: str) -> str:
        """The principal a lease of `name` is bound to; AbortRpc PERMISSION_DENIED/UNAUTHENTICATED."""
        try:
            return self.options.registration.principal(caller, name)
        except RegistrationDenied as exc:
            code = grpc.StatusCode.UNAUTHENTICATED if exc.unauthenticated else grpc.StatusCode.PERMISSION_DENIED
            raise AbortRpc(code, f"{rpc} {name[:80]!r}: {exc}") from None
