"""The deployment files are valid and say what they claim: Kubernetes schemas (kubernetes-validate,
offline, strict), read-only host mounts under the --host-root, non-root and read-only containers with
limits, gRPC health probes, and flags that the real CLI parser accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nodecompat.clients.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def one(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    ds = one("DaemonSet", "nodecompat-node")
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc-port"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _args(container: dict[str, Any]) -> Any:
    return build_parser().parse_args(container["args"])  # SystemExit (a failure) on an unknown flag


@pytest.mark.parametrize(("kind", "name"), [("DaemonSet", "nodecompat-node"), ("Deployment", "nodecompat-aggregator")])
def test_containers_are_non_root_read_only_and_limited(kind: str, name: str) -> None:
    doc = one(kind, name)
    pod = doc["spec"]["template"]["spec"]
    c = _container(doc)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "privileged" not in sc
    assert set(c["resources"]["limits"]) == {"cpu", "memory"} and set(c["resources"]["requests"]) == {"cpu", "memory"}
    port = c["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == port  # the gRPC health service, not a TCP check
    assert f":{port}" in c["args"][1]


def test_daemonset_mounts_the_host_read_only_under_its_host_root() -> None:
    ds = one("DaemonSet", "nodecompat-node")
    pod = ds["spec"]["template"]["spec"]
    args = _args(_container(ds))
    assert args.command == "serve" and args.host_root == "/host" and args.no_hotplug
    host_volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys", "/proc", "/etc/os-release"} <= set(host_volumes.values())
    mounts = {m["name"]: m for m in _container(ds)["volumeMounts"]}
    for name, host_path in host_volumes.items():
        m = mounts[name]
        assert m.get("readOnly") is True, name
        assert m["mountPath"] == "/host" + host_path, name  # the host's layout, re-rooted at --host-root
    env = {e["name"]: e for e in _container(ds)["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_headless_service_is_what_the_aggregator_resolves() -> None:
    ds = one("DaemonSet", "nodecompat-node")
    svc = one("Service", "nodecompat-node")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    agg = _args(_container(one("Deployment", "nodecompat-aggregator")))
    assert agg.command == "aggregator"
    name = svc["metadata"]["name"]
    namespace = svc["metadata"]["namespace"]
    assert agg.dns == [f"{name}.{namespace}.svc.cluster.local:{svc['spec']['ports'][0]['port']}"]
    assert agg.nodes_file.startswith("/etc/nodecompat/")
    agg_svc = one("Service", "nodecompat-aggregator")
    assert (
        agg_svc["spec"]["selector"].items()
        <= one("Deployment", "nodecompat-aggregator")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_kustomization_lists_every_manifest() -> None:
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    assert len([d for d in yaml.safe_load_all(built.stdout) if d]) == len(documents())


def test_systemd_unit_runs_the_daemon_with_flags_the_cli_accepts() -> None:
    unit = (DEPLOY / "systemd" / "nodecompat-node.service").read_text()
    keys = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["ExecStart"].split()[:2] == ["/usr/local/bin/nodecompat", "serve"]
    assert keys["DynamicUser"] == "yes" and keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict"
    assert keys["KillSignal"] == "SIGTERM"
    default_args = keys["Environment"].removeprefix("NODECOMPAT_ARGS=")
    env_file = (DEPLOY / "systemd" / "nodecompat-node.env").read_text()
    example = re.search(r"^NODECOMPAT_ARGS=(.*)$", env_file, re.M)
    assert example is not None
    for flags in (default_args, example.group(1)):
        args = build_parser().parse_args(["serve", *shlex.split(flags)])
        assert args.command == "serve"
    args = build_parser().parse_args(["serve", *shlex.split(example.group(1))])
    assert args.register and args.tls_ca and args.labels  # the hybrid-fleet example uses what it shows


def test_containerfile_builds_from_the_sources_and_runs_non_root() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    repo = DEPLOY.parent
    for src in re.findall(r"^COPY (?!--)(\S+(?: \S+)*) \S+$", text, re.M):
        for part in src.split():
            assert (repo / part).exists(), part
    user = re.findall(r"^USER (\d+)", text, re.M)
    assert user and user[-1] != "0"
    assert 'ENTRYPOINT ["nodecompat"]' in text


def test_deployments_keep_the_security_defaults() -> None:
    """docs/security.md, "DaemonSet": the daemon reaches no registry, the aggregator names its registries
    (HTTPS only) and does not open registration to anyone; the daemon is reachable only from the aggregator."""
    node = _args(_container(one("DaemonSet", "nodecompat-node")))
    assert node.allowed_registries is None
    agg = _args(_container(one("Deployment", "nodecompat-aggregator")))
    assert agg.allowed_registries and not any(p.startswith("http://") for p in agg.allowed_registries)
    assert not agg.allow_unauthenticated_registration
    policy = one("NetworkPolicy", "nodecompat-node")
    sources = policy["spec"]["ingress"][0]["from"]
    assert sources == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "nodecompat-aggregator"}}}]


def _expanded_args(doc: dict[str, Any]) -> Any:
    """The container's args as the kubelet runs them: $(VAR) replaced by the env var, each configMapKeyRef
    read from its ConfigMap in these manifests (Kubernetes' dependent-variable expansion; an unknown
    $(VAR) stays as written, which the assertions below then catch)."""
    c = _container(doc)
    env: dict[str, str] = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = one("ConfigMap", ref["name"])["data"][ref["key"]]
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = "nodecompat-aggregator-7d9c5b6f4-x2x7q"  # a pod name as a ReplicaSet makes it
    expanded = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                for a in c["args"]]
    return build_parser().parse_args(expanded)


def test_aggregator_runs_three_replicas_sharing_registrations_through_etcd() -> None:
    """Issue 14: replicas: 3 with --store etcd://... from the nodecompat-store ConfigMap, rollouts that
    never drop below three ready replicas, replicas spread over nodes."""
    from nodecompat.server.inventory.store_etcd import parse_store_url

    dep = one("Deployment", "nodecompat-aggregator")
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    args = _expanded_args(dep)
    assert args.command == "aggregator"
    endpoints = parse_store_url(args.store)  # ValueError (a failure) on a malformed endpoint list
    assert len(endpoints) == 3 and all(port == 2379 for _host, port in endpoints)
    assert args.store_prefix.startswith("/") and args.store_prefix.endswith("/")
    assert "$(" not in args.store + args.store_prefix
    assert args.replica_id == "nodecompat-aggregator-7d9c5b6f4-x2x7q"  # each pod its own inventory share
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (spread,) = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_disruption_budget_keeps_two_of_the_three_aggregators() -> None:
    dep = one("Deployment", "nodecompat-aggregator")
    pdb = one("PodDisruptionBudget", "nodecompat-aggregator")
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    replicas = dep["spec"]["replicas"]
    if "maxUnavailable" in pdb["spec"]:
        available = replicas - pdb["spec"]["maxUnavailable"]
    else:
        available = pdb["spec"]["minAvailable"]
    assert 2 <= available < replicas  # one voluntary eviction at a time, and drains are not blocked


def test_validator_rejects_a_broken_disruption_budget() -> None:
    pdb = one("PodDisruptionBudget", "nodecompat-aggregator")
    pdb["spec"]["maxUnavailable"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
