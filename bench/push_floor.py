"""The floor of bench/inventory_push_sim.py's re-registration row (issue 12): the same simulator (same client code,
same in-flight bound, same servers of its own for fetches and health checks) against a BARE grpc.aio server in a
process of its own that answers RegisterNode with a constant RegisterNodeResponse (no lease table, no store, no
runtime, no interceptors): what N new connections making one small unary call each cost on this machine, the
limit no aggregator on grpc.aio can beat here. Measured in the same run as the row, since the machine is shared.

    .venv/bin/python bench/push_floor.py --bare PORT_FILE TTL  (child, internal: the floor's server)
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM = Path(__file__).resolve().parent / "inventory_push_sim.py"
WAIT_ALL = 120.0  # s


def _bare(port_file: str, lease_ttl: float) -> None:
    """The floor's server (module doc): grpc.aio, RegisterNode answered with constant bytes; its port in port_file."""
    import grpc

    from nodecompat.v1 import fleet_pb2

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    answer = fleet_pb2.RegisterNodeResponse(ttl_seconds=lease_ttl).SerializeToString()

    async def register(request, context):  # type: ignore[no-untyped-def]
        return answer

    async def run() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.FleetService", {
            "RegisterNode": grpc.unary_unary_rpc_method_handler(register, request_deserializer=None,
                                                                response_serializer=None)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(run())


def floor(n: int, k: int, lease_ttl: float, process_cpu: Callable[[str], float],
          wait_all: float = WAIT_ALL) -> tuple[float, float, float] | None:
    """(seconds from the simulator's first call to its n-th first RegisterNode answered, the bare server's CPU s,
    the simulator's CPU s) against the bare server (module doc); None when not all n were answered in wait_all s."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    port_file, ready = tmp / "port", tmp / "ready"
    bare = subprocess.Popen([sys.executable, __file__, "--bare", str(port_file), str(lease_ttl)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    sim = None
    try:
        while not (port_file.exists() and port_file.read_text()):
            assert bare.poll() is None, "the bare server ended"
            time.sleep(0.02)
        sim = subprocess.Popen([sys.executable, str(SIM), "--simulate", str(ready),
                                f"127.0.0.1:{port_file.read_text()}", str(n), str(k), str(lease_ttl)],
                               env={**os.environ, "PYTHONPATH": str(ROOT / "bench")}, stderr=subprocess.DEVNULL)
        while not (ready.exists() and ready.read_text()):
            assert sim.poll() is None, "the simulator ended"
            time.sleep(0.02)
        bare0, sim0 = process_cpu(str(bare.pid)), process_cpu(str(sim.pid))
        done = Path(str(ready) + ".done")
        end = time.monotonic() + wait_all
        while not (done.exists() and done.read_text()) and time.monotonic() < end:
            time.sleep(0.02)
        bare1, sim1 = process_cpu(str(bare.pid)), process_cpu(str(sim.pid))
        if not (done.exists() and done.read_text()):
            return None
        return float(done.read_text().split()[0]), bare1 - bare0, sim1 - sim0
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait()
        bare.terminate()
        bare.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        sys.path.insert(0, str(ROOT))
        _bare(sys.argv[2], float(sys.argv[3]))
    else:
        print(__doc__)
