"""NFD's view and unseen names over gRPC: ValidateImage(nfd_compat) against a real daemon on a fixture host."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support_daemon import start_daemon

from nodecompat.v1 import node_pb2, node_pb2_grpc, validation_pb2

HOSTS = Path(__file__).resolve().parent / "fixtures" / "hosts"

SPEC = """\
version: v1alpha1
compatibilities:
- description: NUMA-placed GPU node
  rules:
  - name: numa-aware pci
    matchFeatures:
    - feature: pci.device
      matchName: {op: In, value: [numa_node]}
- description: typo
  rules:
  - name: kernel
    matchFeatures:
    - feature: kernel.versoin
      matchExpressions:
        major: {op: Ge, value: ['5']}
"""


@pytest.fixture(scope="module")
def h100(tmp_path_factory: pytest.TempPathFactory):
    d = start_daemon(tmp_path_factory.mktemp("h100"), "--host-root", str(HOSTS / "h100-server"), name="h100")
    yield d
    d.terminate()


def _validate(address: str, nfd: bool) -> node_pb2.ValidateImageResponse:
    with grpc.insecure_channel(address) as ch:
        return node_pb2_grpc.NodeServiceStub(ch).ValidateImage(
            node_pb2.ValidateImageRequest(spec=SPEC, nfd_compat=nfd), timeout=30
        )


def test_nfd_compat_evaluates_nfds_view_and_names_what_it_hid(h100) -> None:
    default = _validate(h100.address, False)
    nfd = _validate(h100.address, True)
    # pci.device numa_node is a nodecompat addition (NFD: source/pci/utils.go publishes no numa_node)
    assert default.compatible and default.report.sets[0].passed and not default.report.nfd_view
    assert not nfd.compatible and not nfd.report.sets[0].passed and nfd.report.nfd_view
    expr = nfd.report.sets[0].rules[0].match_features[0].expressions[0]
    assert expr.fact == validation_pb2.FACT_STATUS_NFD_HIDDEN
    hidden = [(u.feature, u.element, u.fact) for u in nfd.report.unseen_names]
    assert ("pci.device", "numa_node", validation_pb2.FACT_STATUS_NFD_HIDDEN) in hidden


def test_a_name_no_probe_provides_is_a_distinct_field_in_both_modes(h100) -> None:
    for nfd in (False, True):
        resp = _validate(h100.address, nfd)
        term = resp.report.sets[1].rules[0].match_features[0]
        assert not term.matched and not term.unknown  # NFD's verdict: absent
        assert term.fact == validation_pb2.FACT_STATUS_NOT_PROVIDED and term.suggestion == "kernel.version"
        [u] = [u for u in resp.report.unseen_names if u.fact == validation_pb2.FACT_STATUS_NOT_PROVIDED]
        assert (u.feature, u.element, u.suggestion) == ("kernel.versoin", "", "kernel.version")
        assert u.message == "no probe provides `kernel.versoin` — did you mean `kernel.version`?"
