"""The same fleet across network namespaces: each daemon in its own namespace made by this test, at its
own 10.x address on a veth pair, all on the same port, reached by an aggregator in the root namespace.

Needs root and iproute2; skipped otherwise, with the reason. Names are unique per run and everything
this test creates is deleted (deleting a namespace also deletes its veth pair).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support_fleet import FLEET, SPEC_NVIDIA, Proc, aggregator, start_node, write_nodes_file

from nodecompat.clients.fleet_client import FleetClient

pytestmark = pytest.mark.root
DAEMON_PORT = 50051  # the same port in every namespace: each daemon has its own address


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """Three (namespace, address) pairs: 10.<r>.<i>.2 inside namespace i, 10.<r>.<i>.1 on the host side."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    subnet = random.randrange(100, 250)
    made: list[str] = []
    out: list[tuple[str, str]] = []
    try:
        for i in range(len(FLEET)):
            ns, host_if, ns_if = f"ncfleet{tag}n{i}", f"ncf{tag}h{i}", f"ncf{tag}p{i}"
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
            made.append(ns)
            inside, outside = f"10.{subnet}.{i}.2", f"10.{subnet}.{i}.1"
            for cmd in (
                ["link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns],
                ["addr", "add", f"{outside}/30", "dev", host_if],
                ["link", "set", host_if, "up"],
                ["-n", ns, "addr", "add", f"{inside}/30", "dev", ns_if],
                ["-n", ns, "link", "set", ns_if, "up"],
                ["-n", ns, "link", "set", "lo", "up"],
            ):
                r = _ip(*cmd)
                assert r.returncode == 0, f"ip {' '.join(cmd)}: {r.stderr}"
            out.append((ns, inside))
        yield out
    finally:
        for ns in made:
            _ip("netns", "del", ns)


def test_fleet_across_network_namespaces(namespaces: list[tuple[str, str]], tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        for (name, host), (ns, addr) in zip(FLEET.items(), namespaces, strict=True):
            listen = f"{addr}:{DAEMON_PORT}"
            procs.append(start_node(tmp_path, name, host, listen=listen, netns=ns, wait=False))
        for p in procs:
            p.wait_serving()
        path = write_nodes_file(tmp_path / "nodes.json", procs)
        with aggregator(nodes_file=str(path)) as agg, FleetClient(agg.address) as client:
            answer = client.validate(spec_text=SPEC_NVIDIA, timeout=20)
            listed = client.list_nodes()
        got = {n.name: n for n in answer.nodes}
        assert {n: (v.status, v.compatible) for n, v in got.items()} == {
            "h100": ("OK", True),
            "mi300": ("OK", False),
            "vm": ("OK", False),
        }
        assert {v.address for v in got.values()} == {f"{a}:{DAEMON_PORT}" for _, a in namespaces}
        assert {n.health for n in listed} == {"SERVING"}
        # Loopback of the root namespace does not reach them: they really live in their namespaces.
        r = subprocess.run(["ss", "-ltn", f"sport = :{DAEMON_PORT}"], capture_output=True, text=True, timeout=10)
        assert all(addr not in r.stdout for _, addr in namespaces)
    finally:
        for p in procs:
            p.terminate()
