"""Shared pieces of the issue-12 tests: fixture-host probe rounds and a hand-countable spec."""

from __future__ import annotations

import functools
from pathlib import Path

from nodecompat.hostroot import HostRoot
from nodecompat.probes.runner import ProbeRound, probe_once

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hosts"

# Set #1 needs an NVIDIA GPU and its driver loaded; set #2 an AMD GPU.
GPU_SPEC = """
version: v1alpha1
compatibilities:
- description: gpu
  rules:
  - name: nvidia
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["10de"]}
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
- description: amd
  rules:
  - name: amd
    matchFeatures:
    - feature: pci.device
      matchExpressions:
        vendor: {op: In, value: ["1002"]}
"""

NVIDIA_ONLY = """
version: v1alpha1
compatibilities:
- description: nvidia driver
  rules:
  - name: driver
    matchFeatures:
    - feature: kernel.loadedmodule
      matchExpressions:
        nvidia: {op: Exists}
"""


@functools.cache
def fixture_round(name: str) -> ProbeRound:
    """One probe round of a fixture host tree (real probes)."""
    return probe_once(HostRoot(FIXTURES / name))


def unload_module(host_root: Path, module: str) -> None:
    """Remove a kernel module's line from a fixture copy's /proc/modules (as `rmmod` would)."""
    p = host_root / "proc" / "modules"
    lines = [line for line in p.read_text().splitlines(keepends=True) if line.split(" ", 1)[0] != module]
    p.write_text("".join(lines))


def load_module(host_root: Path, module: str) -> None:
    p = host_root / "proc" / "modules"
    p.write_text(p.read_text() + f"{module} 16384 0 - Live 0x0000000000000000\n")


class AioServer:
    """A grpc.aio server on its own event-loop thread serving `servicer` as NodeService (test helper for
    the watch stream before the daemon runtime serves it; real port, real gRPC)."""

    def __init__(self, servicer: object) -> None:
        import asyncio
        import threading

        import grpc

        from nodecompat.v1 import node_pb2_grpc

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server()
            node_pb2_grpc.add_NodeServiceServicer_to_server(servicer, server)  # type: ignore[arg-type]
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, self.port = asyncio.run_coroutine_threadsafe(make(), self.loop).result(10)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import asyncio

        if not self.thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
