"""The webhook's question to the aggregator: FleetService.ValidateFleet with the spec inline, read into
nodecompat.admission's NodeAnswers (fleet.proto).

The request sets `grouped_results`: the aggregator's inventory answers arrive as NodeGroups, each shared
result once followed by the names of the nodes sharing it, instead of one NodeResult (name, address,
labels, probe time, reasons) per node. For 1,000 nodes in a few dozen distinct results that is a fraction
of the bytes to encode, send and decode on the admission path; an aggregator without the field ignores it
and answers node by node, which is read the same way. Live answers (nodes not in the inventory) still
come as `node` / `nodes`.
"""

from __future__ import annotations

from typing import Any

from nodecompat.admission.decide import NodeAnswer
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

MAX_FLEET_NODES = 100_000  # node answers read from one ValidateFleet stream
MAX_REASONS = 4  # reasons kept per node (the deny message quotes a few)


async def validate_fleet(
    stub: fleet_pb2_grpc.FleetServiceStub, spec_text: str, remaining: float
) -> tuple[list[NodeAnswer], list[Any]]:
    """(one NodeAnswer per node, at most MAX_FLEET_NODES; the summary's why_not SetExclusions) for
    `spec_text` within `remaining` seconds. Raises grpc.aio.AioRpcError as the call does."""
    req = fleet_pb2.ValidateFleetRequest(
        spec=spec_text, timeout_seconds=max(0.1, remaining - 0.2), grouped_results=True
    )
    nodes: list[NodeAnswer] = []
    why_not: list[Any] = []
    async for item in stub.ValidateFleet(req, timeout=max(0.1, remaining)):
        kind = item.WhichOneof("item")
        if kind == "summary":
            why_not = list(item.summary.why_not)
        elif kind == "groups":
            for g in item.groups.groups:
                r = g.result
                room = MAX_FLEET_NODES - len(nodes)
                if room <= 0:
                    break
                reasons = list(r.reasons[:MAX_REASONS])
                status = r.status or "OK"
                nodes.extend(NodeAnswer(name, r.compatible, r.score, status, reasons) for name in g.node_names[:room])
        else:
            batch = [item.node] if kind == "node" else list(item.nodes.nodes) if kind == "nodes" else []
            for n in batch[: max(0, MAX_FLEET_NODES - len(nodes))]:
                nodes.append(NodeAnswer(n.node_name, n.compatible, n.score, n.status or "OK",
                                        list(n.reasons[:MAX_REASONS])))
    return nodes, why_not
