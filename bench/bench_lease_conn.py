"""What a registered daemon's connection policy costs the aggregator (server/node/registration.py, module doc:
connections; docs/inventory.md): CPU per heartbeat and RSS per registered node, plaintext and mutual TLS.

Policies (simulated daemons in a child process, one grpc.aio channel per node with a subchannel of its own,
RegisterNode every ttl/3 jittered, as LeaseKeeper; the first registrations at most 48 in flight):
- keep: the channel holds its connection between beats (LeaseKeeper before; the aggregator's 30 s idle limit
  outlasts the 10 s beat, so every node's connection stays open);
- client-idle: a kept channel with grpc.client_idle_timeout_ms=1000 (gRPC closes it after 1-2 s idle);
- server-idle: kept channels, the aggregator's max_connection_idle 2 s (closes every idle connection, its
  WatchFleet/ValidateFleet callers' too: not shippable, measured for comparison);
- per-beat: a channel per beat, closed when the call ends (LeaseKeeper as shipped);
- per-beat-resume: the same with a TLS session cache per daemon (grpc's client LRU), so a beat after the
  first resumes the TLS session (TLS only; measured, not shipped: no CPU saved with EC certificates). gRPC
  keys the cache by the server name it sends (SNI), which it does not send for an IP address: the simulated
  daemons dial 127.0.0.1 with the name `localhost` (grpc.ssl_target_name_override), as a daemon given a host
  name does.

Each policy runs in a fresh aggregator process (an AggregatorDaemon with the lease table only: no inventory
sync, no first health checks, so what differs between policies is the connection). Once every node is
registered and has beaten once more, the aggregator's CPU seconds over one beat interval are divided by the
heartbeats it handled in it (RegisterNode accepted); RSS growth from before the daemons started, divided by
the nodes; the daemon connections open then (`ss`). Certificates: a test CA and one EC P-256 leaf (openssl CLI).

    .venv/bin/python bench/bench_lease_conn.py [--nodes 1000] [--runs 3] [--policies keep,per-beat,...]

No asserts: it prints one line per policy and run, then the medians with min/max.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEASE_TTL = 30.0  # the aggregator's default lease: a beat every 10 s
IN_FLIGHT = 48
POLICIES = ["keep", "client-idle", "server-idle", "per-beat", "per-beat-resume"]


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """(ca, cert, key): a CA and a leaf for 127.0.0.1 and localhost, server and client use (EC P-256, openssl)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=bench ca")
    (d / "leaf.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
                                "basicConstraints=CA:FALSE\n")
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=leaf")
    run("x509", "-req", "-in", "leaf.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "leaf.crt", "-days", "2", "-extfile", "leaf.ext")
    return d / "ca.crt", d / "leaf.crt", d / "leaf.key"


# -- the simulated daemons (child process) --------------------------------------------------------------
def daemons(agg: str, n: int, policy: str, certs: str) -> None:
    import grpc
    from grpc.experimental.session_cache import ssl_session_cache_lru

    from nodecompat.server import tls
    from nodecompat.server.inventory.registration_auth import LEASE_KEY_METADATA
    from nodecompat.v1 import fleet_pb2

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    creds = None
    if certs:
        d = Path(certs)
        creds = tls.channel_credentials(d / "ca.crt", d / "leaf.crt", d / "leaf.key")
    base: list[tuple[str, object]] = [("grpc.use_local_subchannel_pool", 1)]
    if creds is not None:  # a host name, as an operator's --register gives: gRPC keys its session cache by it
        base.append(("grpc.ssl_target_name_override", "localhost"))
    if policy == "client-idle":
        base.append(("grpc.client_idle_timeout_ms", 1000))
    per_beat = policy.startswith("per-beat")

    def channel(options: list[tuple[str, object]]) -> grpc.aio.Channel:
        if creds is None:
            return grpc.aio.insecure_channel(agg, options=options)
        return grpc.aio.secure_channel(agg, creds, options=options)

    async def node(i: int, gate: asyncio.Semaphore) -> None:
        options = list(base)
        if policy == "per-beat-resume" and creds is not None:
            options.append(("grpc.ssl_session_cache", ssl_session_cache_lru(1)))
        req = fleet_pb2.RegisterNodeRequest(name=f"sim-{i:05d}", address=f"127.{1 + i // 62500}.{(i // 250) % 250}."
                                            f"{1 + i % 250}:9")
        md = ((LEASE_KEY_METADATA, secrets.token_hex(32)),)
        ch = channel(options)

        async def beat(timeout: float) -> bool:
            nonlocal ch
            if per_beat:
                ch = channel(options)
            try:
                await ch.unary_unary("/nodecompat.v1.FleetService/RegisterNode",
                                     request_serializer=fleet_pb2.RegisterNodeRequest.SerializeToString,
                                     response_deserializer=fleet_pb2.RegisterNodeResponse.FromString)(
                    req, timeout=timeout, metadata=md)
                return True
            except grpc.aio.AioRpcError:
                return False
            finally:
                if per_beat:
                    await ch.close()

        async with gate:
            while not await beat(10):
                await asyncio.sleep(1.0)
        while True:
            await asyncio.sleep(LEASE_TTL / 3 * (0.9 + 0.2 * random.random()))
            await beat(5)

    async def run() -> None:
        gate = asyncio.Semaphore(IN_FLIGHT)
        tasks = [asyncio.ensure_future(node(i, gate)) for i in range(n)]
        await asyncio.gather(*tasks)

    asyncio.run(run())


# -- one policy: the aggregator here, the daemons in a child -------------------------------------------
def one(policy: str, with_tls: bool, n: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_inventory import process_cpu, rss_bytes  # type: ignore[import-not-found]

    from nodecompat.server import tls
    from nodecompat.server.fleet.aggregator import AggregatorConfig, AggregatorDaemon
    from nodecompat.server.inventory.registration_auth import RegistrationPolicy
    from nodecompat.server.runtime.gc_tuning import tune_for_serving
    from nodecompat.server.runtime.malloc_tuning import limit_arenas

    limit_arenas()  # as `nodecompat aggregator` does
    tune_for_serving()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    certs = ""
    creds = None
    if with_tls:
        certs = tempfile.mkdtemp(prefix="bench-lease-tls-")
        ca, cert, key = make_certs(Path(certs))
        creds = tls.server_credentials(cert, key, ca)
    agg = AggregatorDaemon(AggregatorConfig(
        listen="127.0.0.1:0", lease_ttl=LEASE_TTL, max_registrations=n, sync=None, check_new_nodes=False,
        registration=RegistrationPolicy(allow_unauthenticated=True), server_credentials=creds,
        max_connection_idle=2.0 if policy == "server-idle" else AggregatorConfig.max_connection_idle))
    port = agg.start()
    beats = [0]

    def counting(register):  # type: ignore[no-untyped-def]
        def counted(*a, **kw):  # type: ignore[no-untyped-def]
            ttl = register(*a, **kw)
            beats[0] += ttl is not None  # register_now's None: the call goes on to register in a worker
            return ttl

        return counted

    # RegisterNode on the event loop (register_now) or in a worker (register)
    agg.inventory.register = counting(agg.inventory.register)  # type: ignore[method-assign]
    agg.inventory.register_now = counting(agg.inventory.register_now)  # type: ignore[method-assign]
    gc.collect()
    time.sleep(0.5)
    rss0 = rss_bytes()
    sim = subprocess.Popen([sys.executable, __file__, "--daemons", f"127.0.0.1:{port}", str(n), policy, certs],
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        end = time.monotonic() + 120
        while agg.inventory.registrations() < n and time.monotonic() < end:
            time.sleep(0.2)
        got = agg.inventory.registrations()
        time.sleep(LEASE_TTL / 3 + 1.0)  # every node beats once more: the steady cadence
        b0, c0, t0 = beats[0], process_cpu("self"), time.perf_counter()
        time.sleep(LEASE_TTL / 3)
        handled, cpu = beats[0] - b0, process_cpu("self") - c0
        wall = time.perf_counter() - t0
        gc.collect()
        rss1 = rss_bytes()
        est = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True,
                             text=True).stdout.count("\n")
        print(f"RESULT {policy} {'mtls' if with_tls else 'plain'} cpu_ms_per_beat={cpu / max(1, handled) * 1e3:.3f} "
              f"rss_b_per_node={(rss1 - rss0) / max(1, got):.0f} open={est} registered={got}/{n} "
              f"beats={handled / wall:.0f}/s loadavg={Path('/proc/loadavg').read_text().split()[0]}", flush=True)
    finally:
        sim.terminate()
        sim.wait()
        agg.stop(grace=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--plain-only", action="store_true")
    args = ap.parse_args()
    combos = [(p, t) for t in ((False,) if args.plain_only else (False, True)) for p in args.policies.split(",")
              if not (p == "per-beat-resume" and not t)]
    results: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for r in range(args.runs):  # alternated: a neighbour's load weighs on every policy alike
        for policy, with_tls in combos:
            out = subprocess.run([sys.executable, __file__, "--one", policy, "1" if with_tls else "0", str(args.nodes)],
                                 capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("RESULT"):
                    print(f"run {r + 1}: {line[7:]}", flush=True)
                    f = dict(kv.split("=", 1) for kv in line.split()[3:])
                    results.setdefault((line.split()[1], line.split()[2]), []).append(
                        (float(f["cpu_ms_per_beat"]), float(f["rss_b_per_node"]), int(f["open"])))
    print(f"{args.nodes} registered nodes, beat every {LEASE_TTL / 3:g} s; median (min-max) of {args.runs} runs:")
    for (policy, mode), rs in results.items():
        cpu, rss, est = ([x[i] for x in rs] for i in range(3))
        print(f"  {policy:16s} {mode:5s} aggregator CPU per beat {statistics.median(cpu):.2f} ms ({min(cpu):.2f}-"
              f"{max(cpu):.2f}); RSS per node {statistics.median(rss):,.0f} B ({min(rss):,.0f}-{max(rss):,.0f}); "
              f"daemon connections open {statistics.median(est):.0f} ({min(est)}-{max(est)})")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--daemons":
        daemons(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) == 5 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
    else:
        main()
