"""FleetService.WhatIf: many specs against every selected node, answered from the live inventory.

Each spec (inline or by image reference, resolved once through the aggregator's spec cache) is
evaluated once per distinct feature set held (FeatureStore.evaluate); a node the inventory cannot
answer for (no features yet, STALE, UNREACHABLE) gets a cell with that status instead of a verdict —
what-if is a planning question over known facts, so it does not fan out. A spec that cannot be fetched
or parsed is an error on its row, not on the call; so is a spec reading a volatile usage value
(memory.size available_bytes, free huge pages: nodecompat/fleet/volatile.py), which no stored set holds
(FAILED_PRECONDITION on the row, naming the element and saying to use ValidateFleet LIVE or ValidateImage).
Bounded: at most MAX_WHATIF_SPECS specs and MAX_WHATIF_CELLS cells (specs x nodes) per call,
INVALID_ARGUMENT past either with what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from nodecompat.engine.spec import Spec
from nodecompat.fleet.store import STATE_OK, FeatureStore, spec_key
from nodecompat.fleet.volatile import volatile_problem
from nodecompat.fleet.whatif import MAX_WHATIF_SPECS, Cell, Row, cell_from_verdict
from nodecompat.server.fleet.fleet_watch import Aborted, RaisingContext
from nodecompat.server.inventory.fleet_nodes import SOURCE_DNS, FleetNode
from nodecompat.v1 import fleet_pb2, inventory_pb2

MAX_WHATIF_CELLS = 50_000

# (request-like with image/spec/platform/plain_http/tags/nfd_compat, context, deadline) -> (text, image digest,
# artifact digest); and (text, context, origin, nfd_compat) -> Spec. Both abort through the context.
Resolve = Callable[[Any, Any, float], tuple[str, str, str]]
Parse = Callable[[str, Any, str, bool], Spec]


def what_if(
    request: inventory_pb2.WhatIfRequest,
    context: grpc.ServicerContext,
    store: FeatureStore | None,
    members: Callable[[dict[str, str]], Sequence[FleetNode]],
    resolve: Resolve,
    parse: Parse,
    default_timeout: float,
) -> inventory_pb2.WhatIfResponse:
    if store is None:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                      "WhatIf answers from the inventory; this aggregator runs with --no-inventory")
        raise AssertionError("unreachable")
    if not request.specs:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "WhatIf: give at least one spec (image or inline)")
    if len(request.specs) > MAX_WHATIF_SPECS:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"WhatIf: at most {MAX_WHATIF_SPECS} specs per call, got {len(request.specs)}; split the call")
    nodes = list(members(dict(request.selector)))
    if len(nodes) * len(request.specs) > MAX_WHATIF_CELLS:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"WhatIf: {len(request.specs)} specs x {len(nodes)} nodes is more than {MAX_WHATIF_CELLS} "
                      "cells; narrow with a selector or split the specs")
    budget = request.timeout_seconds or default_timeout
    left = context.time_remaining()
    if left is not None:
        budget = min(budget, left)
    deadline = time.monotonic() + budget
    records = {n.address: store.get(n.address) for n in nodes}
    usable = [r for r in records.values() if r is not None and r.has_features and r.state == STATE_OK]
    out = inventory_pb2.WhatIfResponse()
    for i, ws in enumerate(request.specs):
        source = ws.WhichOneof("source")
        row = Row(name=ws.name or (ws.image if source == "image" else f"spec #{i + 1}"))
        as_validate = fleet_pb2.ValidateFleetRequest(tags=request.tags, platform=request.platform,
                                                     plain_http=request.plain_http, nfd_compat=request.nfd_compat)
        try:
            if source == "image":
                as_validate.image = ws.image
            elif source == "spec":
                as_validate.spec = ws.spec
            else:
                raise Aborted(grpc.StatusCode.INVALID_ARGUMENT, "set either `image` or `spec`")
            text, row.image_digest, row.artifact_digest = resolve(as_validate, RaisingContext(), deadline)
            spec = parse(text, RaisingContext(), ws.image or row.name, request.nfd_compat)
            if problem := volatile_problem(spec):  # no stored set holds usage values (fleet/volatile.py)
                raise Aborted(grpc.StatusCode.FAILED_PRECONDITION, f"WhatIf: {problem}")
        except Aborted as exc:
            row.error = f"{exc.code.name}: {exc.details}"
            out.rows.append(_row_message(row))
            continue
        verdicts = store.evaluate(spec, spec_key(text, request.nfd_compat), usable, list(request.tags),
                                  request.nfd_compat)
        for n in nodes:
            rec = records[n.address]
            name = rec.name if rec is not None and rec.name and n.source == SOURCE_DNS else n.name
            v = verdicts.get(n.address)
            if v is None:
                status = "NO_FEATURES" if rec is None or not rec.has_features else rec.state
                row.cells.append(Cell(node_name=name, status=status, reason=rec.error if rec else ""))
            else:
                row.cells.append(cell_from_verdict(name, v))
        row.fits = sum(c.compatible for c in row.cells)
        out.rows.append(_row_message(row))
    return out


def _row_message(row: Row) -> inventory_pb2.WhatIfRow:
    from nodecompat import wire

    return wire.to_message(row, inventory_pb2.WhatIfRow)
