"""A Python client for the fleet aggregator: streamed node results and the summary as plain dataclasses.

Orchestrators and the `nodecompat fleet` CLI use this instead of the raw stubs; gRPC failures become
FleetCallError with the status code name and the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from nodecompat.fleet.whynot import SetExclusions
from nodecompat.server import tls
from nodecompat.v1 import fleet_pb2, fleet_pb2_grpc, inventory_pb2
from nodecompat.wire import from_message

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
    # "INVENTORY" (the aggregator's live inventory) or "LIVE" (asked now); as_of: RFC 3339 probe time
    source: str = ""
    as_of: str = ""
    fingerprint: str = ""

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
            inventory_pb2.AnswerSource.Name(m.source) if m.source else "",
            m.as_of.ToJsonString() if m.HasField("as_of") else "",
            m.fingerprint,
        )

    @classmethod
    def from_groups(cls, m: fleet_pb2.NodeGroups) -> Iterator[NodeVerdict]:
        """The verdict of every node of a grouped answer (fleet.proto NodeGroup), as from_proto would give
        for the same node's NodeResult."""
        sets = [dict(ls.labels) for ls in m.label_sets]
        _check_groups(m, sets)
        times: dict[float, str] = {}
        for g in m.groups:
            r = g.result
            source = inventory_pb2.AnswerSource.Name(r.source) if r.source else ""
            reasons = list(r.reasons)
            for name, address, as_of, li in zip(g.node_names, g.addresses, g.as_of_seconds, g.label_sets,
                                                strict=True):
                when = times.get(as_of)
                if when is None:
                    ts = Timestamp()
                    secs = int(as_of)
                    ts.seconds, ts.nanos = secs, int((as_of - secs) * 1e9)
                    when = times[as_of] = ts.ToJsonString()
                yield cls(name, address, dict(sets[li]) if li < len(sets) else {}, r.compatible, r.score, r.status,
                          r.error, r.latency_seconds, r.attempts, list(reasons), source, when, r.fingerprint)


MAX_GROUPED_ENTRIES = 4_000_000  # reasons + labels one grouped message may hand out over its nodes
_TIMESTAMP_RANGE = (-62135596800, 253402300799)  # google.protobuf.Timestamp: 0001-01-01 .. 9999-12-31


def _check_groups(m: fleet_pb2.NodeGroups, sets: list[dict[str, str]]) -> None:
    """FleetCallError for a grouped message that cannot be read node by node (columns of unequal length, a
    probe time outside Timestamp's range) or that would expand past MAX_GROUPED_ENTRIES: each node gets its
    own copy of the group's reasons and of its label set, so a few hundred KB shared by thousands of nodes
    would otherwise become gigabytes."""
    entries = 0
    sizes = [len(s) for s in sets]
    lo, hi = _TIMESTAMP_RANGE
    for g in m.groups:
        n = len(g.node_names)
        if not n == len(g.addresses) == len(g.as_of_seconds) == len(g.label_sets):
            raise FleetCallError("INTERNAL", f"the aggregator sent a malformed grouped answer: node columns of "
                                 f"{n}, {len(g.addresses)}, {len(g.as_of_seconds)}, {len(g.label_sets)} entries")
        if not all(lo <= t <= hi for t in g.as_of_seconds):  # NaN fails too
            raise FleetCallError("INTERNAL", "the aggregator sent a malformed grouped answer: a probe time out of "
                                 "range")
        entries += n * len(g.result.reasons) + sum(sizes[li] if li < len(sizes) else 0 for li in g.label_sets)
    if entries > MAX_GROUPED_ENTRIES:
        raise FleetCallError("RESOURCE_EXHAUSTED", f"the aggregator's grouped answer would expand to {entries} "
                             f"reasons and labels from one message (limit {MAX_GROUPED_ENTRIES})")


@dataclass
class FleetSummary:
    compatible: int
    incompatible: int
    failed: int
    ranking: list[str]
    image_digest: str
    artifact_digest: str
    wall_seconds: float
    # per compatibility set: what excluded how many nodes (nodecompat.fleet.whynot.SetExclusions)
    why_not: list[SetExclusions] = field(default_factory=list)
    from_inventory: int = 0
    live: int = 0
    probe_failed: int = 0
    distinct_feature_sets: int = 0

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
            [from_message(se, SetExclusions) for se in m.why_not],
            m.from_inventory,
            m.live,
            m.probe_failed,
            m.distinct_feature_sets,
        )


@dataclass
class FleetAnswer:
    nodes: list[NodeVerdict]
    summary: FleetSummary

    def __post_init__(self) -> None:
        if not self.summary.ranking and self.nodes:  # a grouped answer: the aggregator's order, made here
            ranked = sorted(self.nodes, key=lambda n: (not n.compatible, -n.score, n.name, n.address))
            self.summary.ranking = [n.name for n in ranked]  # (as server/fleet/fleet_results.py summarize)

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
        max_staleness: float = 0.0,
        live: bool = False,
    ) -> Iterator[NodeVerdict | FleetSummary]:
        """Node verdicts as they arrive, then the summary. timeout 0: the aggregator's default.
        `live` forces a call to every node; `max_staleness` (s) asks live for older inventory entries."""
        req = fleet_pb2.ValidateFleetRequest(
            tags=list(tags),
            platform=platform,
            plain_http=plain_http,
            selector=dict(selector or {}),
            timeout_seconds=timeout,
            nfd_compat=nfd_compat,
            max_staleness_seconds=max_staleness,
            answer_source=inventory_pb2.LIVE if live else inventory_pb2.ANSWER_SOURCE_UNSPECIFIED,
            grouped_results=True,  # an aggregator without it ignores the field and answers node by node
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
                kind = item.WhichOneof("item")
                if kind == "node":
                    yield NodeVerdict.from_proto(item.node)
                elif kind == "nodes":
                    yield from (NodeVerdict.from_proto(n) for n in item.nodes.nodes)
                elif kind == "groups":
                    yield from NodeVerdict.from_groups(item.groups)
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

    def list_nodes(
        self, selector: Mapping[str, str] | None = None, timeout: float = 10.0, max_pages: int = 10_000
    ) -> list[NodeEntry]:
        """Every node matching `selector`, following ListNodes pages (`timeout` seconds per page)."""
        out: list[NodeEntry] = []
        token = ""
        for _ in range(max_pages):
            req = fleet_pb2.ListNodesRequest(selector=dict(selector or {}), page_token=token)
            try:
                resp = self.stub.ListNodes(req, timeout=timeout)
            except grpc.RpcError as exc:
                raise FleetCallError(exc.code().name, exc.details() or "") from None
            out.extend(
                NodeEntry(
                    n.name,
                    n.address,
                    dict(n.labels),
                    n.source,
                    n.last_contact.ToJsonString() if n.HasField("last_contact") else "",
                    n.health,
                )
                for n in resp.nodes
            )
            token = resp.next_page_token
            if not token:
                return out
        raise FleetCallError("OUT_OF_RANGE", f"ListNodes: more than {max_pages} pages; narrow it with --selector")


def event_to_dict(ev: inventory_pb2.FleetEvent) -> dict[str, object]:
    """A WatchFleet event as JSON-ready data (state names as in the proto)."""
    return {
        "node": ev.node_name,
        "address": ev.address,
        "state": inventory_pb2.FleetEvent.State.Name(ev.state),
        "initial": ev.initial,
        "reasons": list(ev.reasons),
        "score": ev.score,
        "as_of": ev.as_of.ToJsonString() if ev.HasField("as_of") else "",
        "fingerprint": ev.fingerprint,
        "labels": dict(ev.labels),
    }


def watch_fleet(
    client: FleetClient,
    *,
    image: str | None = None,
    spec_text: str | None = None,
    tags: Sequence[str] = (),
    platform: str = "",
    plain_http: bool = False,
    selector: Mapping[str, str] | None = None,
    nfd_compat: bool = False,
    timeout: float | None = None,
) -> Iterator[inventory_pb2.WatchFleetResponse]:
    """WatchFleet: the initial events, a `synced` item, then transitions until the call ends."""
    req = inventory_pb2.WatchFleetRequest(
        tags=list(tags), platform=platform, plain_http=plain_http, selector=dict(selector or {}),
        nfd_compat=nfd_compat,
    )
    if image is not None:
        req.image = image
    elif spec_text is not None:
        req.spec = spec_text
    else:
        raise ValueError("give image or spec_text")
    try:
        yield from client.stub.WatchFleet(req, timeout=timeout)
    except grpc.RpcError as exc:
        raise FleetCallError(exc.code().name, exc.details() or "") from None
