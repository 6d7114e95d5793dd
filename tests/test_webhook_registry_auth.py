"""Registry credentials of `nodecompat webhook`: the artifact of an image in Debian's docker-registry with
htpasswd auth (HTTPS, test CA) is read with the same credential sources as `attach`/`validate --image`
(clients/registry_args.py): a docker config.json named by --registry-auth-file, the default
$DOCKER_CONFIG/config.json, or --registry-username with --registry-password-stdin. Without credentials, or
with a wrong password, the registry's 401 follows --failure-policy and the denial names the registry.
A real fleet (daemons on the fixture hosts, aggregator) answers which nodes fit; this test plays the API
server over HTTPS with the webhook's certificate verified."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import support_registry as sr
from support_fleet import SPEC_NVIDIA, Certs, aggregator, default_labels, make_certs, start_fleet, write_nodes_file
from support_registry import auth_registry, docker_config, env_without_docker, push_image  # noqa: F401 (fixture)
from support_webhook import WebhookProc, admits, apply, pod, review

from nodecompat.oci.auth import RECHECK_SECONDS

pytestmark = [pytest.mark.registry, sr.needs_registry]
NODE_LABELS = {name: {**labels, "kubernetes.io/hostname": name} for name, labels in default_labels().items()}


@dataclass
class World:
    image: str
    hooks: dict[str, WebhookProc]
    certs: Certs
    tmp: Path


def _cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nodecompat.clients.cli", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, auth_registry: sr.RegistryProcess) -> Iterator[World]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("webhook-auth")
    assert auth_registry.tls is not None  # credentials only ever go over HTTPS
    reg_ca = str(auth_registry.tls[0])
    image = push_image(auth_registry.host, "webhook/private", tmp, creds=f"{sr.USER}:{sr.PASSWORD}").reference
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC_NVIDIA)
    env = env_without_docker(tmp)
    attached = _cli("attach", "--image", image, "--spec", str(spec), "--ca-file", reg_ca,
                    "--registry-username", sr.USER, "--registry-password-stdin", stdin=sr.PASSWORD + "\n", env=env)
    assert attached.returncode == 0, attached.stderr
    good = docker_config(tmp / "good", auth_registry.host, sr.USER, sr.PASSWORD)
    bad = docker_config(tmp / "bad", auth_registry.host, sr.USER, "not-the-password", encoded=False)
    rotating = docker_config(tmp / "rotating", auth_registry.host, sr.USER, "an-expired-password")
    certs = make_certs(tmp / "pki")
    procs = start_fleet(tmp)
    hooks: dict[str, WebhookProc] = {}
    try:
        nodes = write_nodes_file(tmp / "nodes.json", procs, default_labels())
        with aggregator(nodes_file=str(nodes)) as agg:
            common = ("--allowed-registries", "127.0.0.1:*", "--ca-file", reg_ca, "--failure-policy", "fail")

            def hook(*args: str, env: dict[str, str] = env, stdin: str | None = None) -> WebhookProc:
                return WebhookProc(tmp, certs.ca, certs.cert, certs.key, agg.address, *common, *args,
                                   env=env, stdin=stdin)

            hooks = {
                "auth-file": hook("--registry-auth-file", str(good / "config.json")),
                "docker-config": hook(env={**env, "DOCKER_CONFIG": str(good)}),
                "password-stdin": hook("--registry-username", sr.USER, "--registry-password-stdin",
                                       stdin=sr.PASSWORD + "\n"),
                "anonymous": hook(),
                "wrong-password": hook("--registry-auth-file", str(bad / "config.json")),
                "rotating": hook("--registry-auth-file", str(rotating / "config.json")),
            }
            for h in hooks.values():
                h.wait_ready()
            yield World(image, hooks, certs, tmp)
    finally:
        for h in hooks.values():
            h.stop()
        for p in procs:
            p.kill()


@pytest.mark.parametrize("source", ["auth-file", "docker-config", "password-stdin"])
def test_credentials_read_the_private_artifact_and_the_pod_is_placed_on_the_fitting_node(
    world: World, source: str
) -> None:
    p = pod("private", [world.image])
    resp = world.hooks[source].admit("/mutate", review(p))
    assert resp["allowed"] is True, resp
    patched = apply(p, resp)
    assert {n for n, labels in NODE_LABELS.items() if admits(patched, labels, n)} == {"h100"}
    assert sr.PASSWORD not in world.hooks[source].log.read_text()  # a secret is never logged


@pytest.mark.parametrize("source", ["anonymous", "wrong-password"])
def test_without_valid_credentials_the_registry_refusal_follows_the_failure_policy(
    world: World, source: str
) -> None:
    p = pod("private", [world.image])
    resp = world.hooks[source].admit("/validate", review(p))
    assert resp["allowed"] is False
    message = resp["status"]["message"]
    assert world.image in message and "registry" in message and "credentials" in message, message


def test_a_rotated_pull_secret_is_used_without_restarting_the_webhook(world: World) -> None:
    # The kubelet swaps a mounted Secret's file atomically; the webhook re-reads the file when it changes
    # (nodecompat/oci/auth.py DockerConfigFile).
    p = pod("private", [world.image])
    hook = world.hooks["rotating"]
    assert hook.admit("/validate", review(p))["allowed"] is False  # the expired password
    secret = world.tmp / "rotating"
    new = secret / "config.json.new"
    new.write_text((world.tmp / "good" / "config.json").read_text())
    os.replace(new, secret / "config.json")
    time.sleep(RECHECK_SECONDS + 0.2)
    resp = hook.admit("/mutate", review(p))
    assert resp["allowed"] is True, resp
    assert {n for n, labels in NODE_LABELS.items() if admits(apply(p, resp), labels, n)} == {"h100"}


def test_credential_flag_errors_exit_2_naming_the_flag(world: World, tmp_path: Path) -> None:
    base = ("webhook", "--listen", "127.0.0.1:1", "--tls-cert", str(world.certs.cert), "--tls-key",
            str(world.certs.key), "--aggregator", "127.0.0.1:1")
    env = env_without_docker(tmp_path)
    missing = _cli(*base, "--registry-auth-file", str(tmp_path / "nope.json"), env=env)
    assert missing.returncode == 2 and "--registry-auth-file" in missing.stderr, missing.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    bad = _cli(*base, "--registry-auth-file", str(broken), env=env)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr, bad.stderr
    no_user = _cli(*base, "--registry-password-stdin", stdin="pw\n", env=env)
    assert no_user.returncode == 2 and "--registry-username" in no_user.stderr, no_user.stderr
