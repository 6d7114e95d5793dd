"""A Python client for the fleet aggregator: streamed node results and the summary as plain dataclasses.

Orchestrators and the `nodecompat fleet` CLI use this instead of the raw stubs; gRPC failures become
FleetCallError with the status code name and the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import grpc

from nodecompat.server import tls
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc

DEADLINE_SLACK = 2.0  # the client's own gRPC deadline is this much beyond the fleet timeout


class FleetCallError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class NodeVerdict:
    name: str
    address: str
    labels: dict[str, str]
    compatible: bool
    score: int
    status: str
    error: str
    latency_seconds: float
    attempts: int
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, m: fleet_pb2.NodeResult) -> NodeVerdict:
        return cls(
            m.node_name,
            m.address,
            dict(m.labels),
            m.compatible,
            m.score,
            m.status,
            m.error,
            m.latency_seconds,
            m.attempts,
            list(m.reasons),
        )


@dataclass
class FleetSummary:
    compatible: int
    incompatible: int
    failed: int
    ranking: list[str]
    image_digest: str
    artifact_digest: str
    wall_seconds: float

    @classmethod
    def from_proto(cls, m: fleet_pb2.FleetSummary) -> FleetSummary:
        return cls(
            m.compatible,
            m.incompatible,
            m.failed,
            [r.node_name for r in m.ranking],
            m.image_digest,
            m.artifact_digest,
            m.wall_seconds,
        )


@dataclass
class FleetAnswer:
    nodes: list[NodeVerdict]
    summary: FleetSummary

    def ranked(self) -> list[NodeVerdict]:
        """Nodes in the summary's order (compatible first, then score, then name)."""
        order = {name: i for i, name in enumerate(self.summary.ranking)}
        return sorted(self.nodes, key=lambda n: (order.get(n.name, len(order)), n.address))

    def to_dict(self) -> dict[str, object]:
        return {"nodes": [asdict(n) for n in self.ranked()], "summary": asdict(self.summary)}


@dataclass
class NodeEntry:
    name: str
    address: str
    labels: dict[str, str]
    source: str
    last_contact: str  # RFC 3339, "" when never contacted
    health: str


class FleetClient:
    def __init__(self, address: str, *, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        self.channel = tls.open_channel(address, credentials, [("grpc.max_receive_message_length", 16 << 20)])
        self.stub = fleet_pb2_grpc.FleetServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stream(
        self,
        *,
        image: str | None = None,
        spec_text: str | None = None,
        tags: Sequence[str] = (),
        platform: str = "",
        plain_http: bool = False,
        selector: Mapping[str, str] | None = None,
        timeout: float = 0.0,
        nfd_compat: bool = False,
    ) -> Iterator[NodeVerdict | FleetSummary]:
        """Node verdicts as they arrive, then the summary. timeout 0: the aggregator's default."""
        req = fleet_pb2.ValidateFleetRequest(
            tags=list(tags),
            platform=platform,
            plain_http=plain_http,
            selector=dict(selector or {}),
            timeout_seconds=timeout,
            nfd_compat=nfd_compat,
        )
        if image is not None:
            req.image = image
        elif spec_text is not None:
            req.spec = spec_text
        else:
            raise ValueError("give image or spec_text")
        call_timeout = timeout + DEADLINE_SLACK if timeout else None
        try:
            for item in self.stub.ValidateFleet(req, timeout=call_timeout):
                if item.WhichOneof("item") == "node":
                    yield NodeVerdict.from_proto(item.node)
                else:
                    yield FleetSummary.from_proto(item.summary)
        except grpc.RpcError as exc:
            raise FleetCallError(exc.code().name, exc.details() or "") from None

    def validate(self, **kw: object) -> FleetAnswer:
        """The whole answer (same arguments as stream())."""
        nodes: list[NodeVerdict] = []
        summary: FleetSummary | None = None
        for item in self.stream(**kw):  # type: ignore[arg-type]
            if isinstance(item, NodeVerdict):
                nodes.append(item)
            else:
                summary = item
        if summary is None:
            raise FleetCallError("INTERNAL", "the aggregator ended the stream without a summary")
        return FleetAnswer(nodes, summary)

    def list_nodes(self, selector: Mapping[str, str] | None = None, timeout: float = 10.0) -> list[NodeEntry]:
        try:
            resp = self.stub.ListNodes(fleet_pb2.ListNodesRequest(selector=dict(selector or {})), timeout=timeout)
        except grpc.RpcError as exc:
            raise FleetCallError(exc.code().name, exc.details() or "") from None
        return [
            NodeEntry(
                n.name,
                n.address,
                dict(n.labels),
                n.source,
                n.last_contact.ToJsonString() if n.HasField("last_contact") else "",
                n.health,
            )
            for n in resp.nodes
        ]
