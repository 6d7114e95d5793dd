"""A Python client for the node daemon: features and validation as core objects, errors as exceptions.

Other services use this instead of the raw stubs: it returns the feature model and verdict dataclasses
and turns gRPC failures into NodeCallError carrying the status code name and the server's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from nodecompat import wire
from nodecompat.hostport import split_address
from nodecompat.probes.runner import ProbeRound
from nodecompat.server import tls
from nodecompat.server.errors import DETAILS_BUDGET_METADATA, MAX_STATUS_DETAILS_BYTES, problems_from_status
from nodecompat.v1 import features_pb2, node_pb2, node_pb2_grpc


class NodeCallError(Exception):
    """A failed call: the status code name, the server's (short) message and, when the status carried
    google.rpc.BadRequest details (an invalid spec), every problem listed there."""

    def __init__(self, code: str, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.problems = list(problems)


# The CLI wants every problem of an invalid spec: it accepts large trailers and tells the daemon so.
_CHANNEL_OPTIONS: list[tuple[str, object]] = [
    ("grpc.max_metadata_size", MAX_STATUS_DETAILS_BYTES + (64 << 10)),
    ("grpc.absolute_max_metadata_size", MAX_STATUS_DETAILS_BYTES + (64 << 10)),
]
_CALL_METADATA = ((DETAILS_BUDGET_METADATA, str(MAX_STATUS_DETAILS_BYTES)),)


@dataclass
class ValidationResult:
    """ValidateImage's answer: the verdict plus where the spec came from."""

    verdict: object  # nodecompat.engine.verdict.Verdict
    image: str = ""
    image_digest: str = ""
    artifact_digest: str = ""
    node_name: str = ""


class NodeClient:
    def __init__(
        self, address: str, *, credentials: grpc.ChannelCredentials | None = None, timeout: float = 60.0
    ) -> None:
        """credentials: TLS (see nodecompat.server.tls / clients.tls_args); None is plaintext.

        ValueError when `address` is not HOST:PORT with a port gRPC would dial as given."""
        split_address(address)
        self.address = address
        self.timeout = timeout
        self.channel = tls.open_channel(address, credentials, _CHANNEL_OPTIONS)
        self.stub = node_pb2_grpc.NodeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=_CALL_METADATA)
        except grpc.RpcError as exc:
            raise NodeCallError(exc.code().name, exc.details() or "", problems_from_status(exc)) from None

    def get_features(self, *, refresh: bool = False, prefixes: Sequence[str] = ()) -> tuple[str, ProbeRound]:
        """(node name, probe round) as the daemon has it."""
        resp = self._call(
            self.stub.GetFeatures, features_pb2.GetFeaturesRequest(refresh=refresh, prefixes=list(prefixes))
        )
        return resp.node_name, wire.round_from_response(resp)

    def validate(
        self,
        *,
        spec_text: str | None = None,
        image: str | None = None,
        tags: Sequence[str] = (),
        platform: str = "",
        plain_http: bool = False,
        nfd_compat: bool = False,
        nfd_json: bool = False,
    ) -> ValidationResult:
        from nodecompat.engine.verdict import Verdict

        req = node_pb2.ValidateImageRequest(
            tags=list(tags), platform=platform, plain_http=plain_http, nfd_compat=nfd_compat, nfd_json=nfd_json
        )
        if spec_text is not None:
            req.spec = spec_text
        elif image is not None:
            req.image = image
        else:
            raise ValueError("give spec_text or image")
        resp = self._call(self.stub.ValidateImage, req)
        verdict = report_to_verdict(resp, Verdict)
        r = resp.report
        return ValidationResult(verdict, r.image, r.image_digest, r.artifact_digest, r.node_name)

    def validate_spec(self, spec_text: str, *, tags: Sequence[str] = (), nfd_compat: bool = False) -> object:
        """The Verdict for an inline spec."""
        return self.validate(spec_text=spec_text, tags=tags, nfd_compat=nfd_compat).verdict


def report_to_verdict(resp: node_pb2.ValidateImageResponse, verdict_cls: type) -> object:
    return wire.from_message(resp.report, verdict_cls, compatible=resp.compatible, score=resp.score)
