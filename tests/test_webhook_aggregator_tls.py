"""`nodecompat webhook --aggregator-tls-ca/--aggregator-tls-cert/--aggregator-tls-key` end to end: a real
aggregator process serving mutual TLS (it requires a client certificate from the test CA) over daemons on
the fixture hosts that require it too, an artifact in Debian's docker-registry, and this test playing the
API server over HTTPS. With the right flags the pod is placed on the fitting node; with no client
certificate, a certificate from another CA, plaintext, or a CA that did not sign the aggregator's
certificate, the aggregator cannot be reached and --failure-policy decides, the denial naming the
aggregator. Certificates made with the openssl CLI (tests/support_fleet.make_certs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support_fleet import (
    SPEC_NVIDIA,
    Certs,
    default_labels,
    make_certs,
    start_aggregator_process,
    start_fleet,
    write_nodes_file,
)
from support_registry import push_image, push_raw_artifact, registry, subject_of  # noqa: F401 (fixture)
from support_webhook import WebhookProc, admits, apply, pod, review

from nodecompat.server import tls

pytestmark = pytest.mark.registry
NODE_LABELS = {name: {**labels, "kubernetes.io/hostname": name} for name, labels in default_labels().items()}


@dataclass
class World:
    image: str
    certs: Certs
    hooks: dict[str, WebhookProc]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, registry) -> Iterator[World]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("webhook-agg-tls")
    image = push_image(registry.host, "webhook/mtls", tmp)
    push_raw_artifact(registry.host, "webhook/mtls", subject_of(image), layers=[SPEC_NVIDIA.encode()])
    certs = make_certs(tmp / "pki")
    flags = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key), "--tls-ca", str(certs.ca)]
    good = tls.channel_credentials(certs.ca, certs.cert, certs.key)
    procs = start_fleet(tmp, args=flags, credentials=good)
    hooks: dict[str, WebhookProc] = {}
    try:
        nodes = write_nodes_file(tmp / "nodes.json", procs, default_labels())
        procs.append(start_aggregator_process(tmp, "--nodes-file", str(nodes), *flags, credentials=good))
        agg = procs[-1].address
        common = ("--allowed-registries", "http://127.0.0.1:*", "--plain-http", "--failure-policy", "fail",
                  "--deadline", "5")
        rogue_ca = str(certs.dir / "rogue-ca.crt")
        variants = {
            "mtls": ("--aggregator-tls-ca", str(certs.ca), "--aggregator-tls-cert", str(certs.cert),
                     "--aggregator-tls-key", str(certs.key)),
            "no-client-cert": ("--aggregator-tls-ca", str(certs.ca)),
            "rogue-client-cert": ("--aggregator-tls-ca", str(certs.ca), "--aggregator-tls-cert",
                                  str(certs.rogue_cert), "--aggregator-tls-key", str(certs.rogue_key)),
            "plaintext": (),
            "wrong-ca": ("--aggregator-tls-ca", rogue_ca, "--aggregator-tls-cert", str(certs.cert),
                         "--aggregator-tls-key", str(certs.key)),
        }
        hooks = {name: WebhookProc(tmp, certs.ca, certs.cert, certs.key, agg, *common, *extra)
                 for name, extra in variants.items()}
        for h in hooks.values():
            h.wait_ready()
        yield World(image.reference, certs, hooks)
    finally:
        for h in hooks.values():
            h.stop()
        for p in procs:
            p.kill()


def test_mutual_tls_to_the_aggregator_places_the_pod_on_the_fitting_node(world: World) -> None:
    p = pod("mtls", [world.image])
    resp = world.hooks["mtls"].admit("/mutate", review(p))
    assert resp["allowed"] is True, resp
    patched = apply(p, resp)
    assert {n for n, labels in NODE_LABELS.items() if admits(patched, labels, n)} == {"h100"}
    assert world.hooks["mtls"].admit("/validate", review(p))["allowed"] is True


@pytest.mark.parametrize("variant", ["no-client-cert", "rogue-client-cert", "plaintext", "wrong-ca"])
def test_without_the_right_tls_the_aggregator_is_unreachable_and_the_failure_policy_denies(
    world: World, variant: str
) -> None:
    p = pod("mtls", [world.image])
    resp = world.hooks[variant].admit("/mutate", review(p))
    assert resp["allowed"] is False, resp
    message = resp["status"]["message"]
    assert "failure policy fail" in message and "aggregator: UNAVAILABLE" in message, message
    assert "--aggregator-tls-ca" in message, message  # what to check, not only gRPC's "Socket closed"
    assert "patch" not in resp


def test_aggregator_tls_flag_errors_exit_2(world: World) -> None:
    base = [sys.executable, "-m", "nodecompat.clients.cli", "webhook", "--listen", "127.0.0.1:1", "--tls-cert",
            str(world.certs.cert), "--tls-key", str(world.certs.key), "--aggregator", "127.0.0.1:1"]
    for extra, named in (
        (["--aggregator-tls-cert", str(world.certs.cert)], "key"),
        (["--aggregator-tls-ca", str(Path(world.certs.dir) / "nope.crt")], "nope.crt"),
    ):
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and named in done.stderr, done.stderr
