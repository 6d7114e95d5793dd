"""RSS a grpc.aio channel costs per gRPC core channel argument: connected, after one unary call, with a stream open.

The aggregator keeps one connection per node twice: the fan-out pool's channels (server/fleet/channel_pool.py, a
unary call each) and the inventory's subscriptions (server/inventory/inventory_sync.py, a WatchFeatures stream
each). This measures, each variant in a fresh process against a server child (grpc.aio, every node its own loopback
address as in bench_inventory.py so no two channels share a subchannel), the growth of VmRSS divided by the
number of channels at three stages: every channel connected (channel_ready), then one small unary call on each,
then a server-streaming call open on each with its first message (a few bytes) received; then after gc.collect()
and malloc_trim(0). The variants are the production options (`pool`, `sync`) and each candidate argument added
alone to the pool's options; `--tls` runs both ends with mutual TLS (certificates made by tests/support_fleet.py).

    .venv/bin/python bench/channel_args.py [--nodes 2000] [--tls] [--variants pool,sync,...] [--repeat 1]

Run by `streams_breakdown.py args` as well. No asserts: it prints a table (bytes a channel, each stage).

What it found (grpcio 1.85, 2,000 channels, load 5-11; bytes a channel connected / after a unary call / with a
stream open): insecure, the pool's options 26.3k / 30.1k / 52.4k and the subscriptions' 26.8k / 30.3k / 46.7k;
no read-chunk, read-buffer, HPACK table, write-buffer, lookahead, BDP, metadata-size, service-config or
subchannel-pool argument moves any stage by more than ~0.4k (gRPC's posix endpoint allocates its reads in 8 KiB
slices whatever tcp_read_chunk_size says and keeps the spare part for the next read; it gives it back only under
the resource quota's memory pressure, which Python cannot configure). grpc.enable_retries=0 saves ~6k a stream
(the subscriptions have it) and ~0.3k a pooled channel. grpc.minimal_stack saves ~2.4k a channel and ~10k a
stream but leaves out the client message-size filter: max_receive_message_length is no longer enforced
(tests/test_inventory_big_features.py fails: a 6 MiB features message is parsed), so it is not used. Under mutual
TLS a channel costs 87k / 92k / 115k (the TLS session); grpc.tsi.max_frame_size 1 KiB takes 6.8k off, 4 KiB 4.1k.
Channels to the same address with the same arguments share one connection (gRPC's global subchannel pool): a
second such channel costs ~9.3k after a call against ~28k for the first, so ~19k of a channel is its connection.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "chanargs.S"

# Candidate arguments, each added alone to the fan-out pool's options (names as gRPC core spells them, checked
# against the installed grpcio's cygrpc strings; include/grpc/impl/channel_arg_names.h).
CANDIDATES: dict[str, list[tuple[str, Any]]] = {
    "read_chunk_1k": [("grpc.experimental.tcp_read_chunk_size", 1024),
                      ("grpc.experimental.tcp_min_read_chunk_size", 256),
                      ("grpc.experimental.tcp_max_read_chunk_size", 8192)],
    "read_buffer_8k": [("grpc.experimental.tcp_max_read_buffer_size", 8192)],
    "hpack_0": [("grpc.http2.hpack_table_size.decoder", 0), ("grpc.http2.hpack_table_size.encoder", 0)],
    "write_buffer_4k": [("grpc.http2.write_buffer_size", 4096)],
    "lookahead_4k": [("grpc.http2.lookahead_bytes", 4096)],
    "bdp_off": [("grpc.http2.bdp_probe", 0)],
    "metadata_8k": [("grpc.max_metadata_size", 8192), ("grpc.absolute_max_metadata_size", 16384)],
    "retries_off": [("grpc.enable_retries", 0)],
    "no_svc_config": [("grpc.service_config_disable_resolution", 1)],
    "local_pool": [("grpc.use_local_subchannel_pool", 1)],
    "minimal_stack": [("grpc.minimal_stack", 1)],
    "tsi_1k": [("grpc.tsi.max_frame_size", 1024)],
    "tsi_4k": [("grpc.tsi.max_frame_size", 4096)],
}


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def serve(port_file: str, tls_dir: str) -> None:
    """The server child: Unary answers b"ok"; Watch sends b"first" and holds the stream open."""
    import grpc

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def unary(request: bytes, context: Any) -> bytes:
        return b"ok"

    async def watch(request: bytes, context: Any) -> Any:
        yield b"first"
        await asyncio.sleep(3600)

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_connection_idle_ms", 3_600_000)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Watch": grpc.unary_stream_rpc_method_handler(watch)}),))
        if tls_dir:
            d = Path(tls_dir)
            creds = grpc.ssl_server_credentials([((d / "leaf.key").read_bytes(), (d / "leaf.crt").read_bytes())],
                                                root_certificates=(d / "ca.crt").read_bytes(), require_client_auth=True)
            port = server.add_secure_port("0.0.0.0:0", creds)
        else:
            port = server.add_insecure_port("0.0.0.0:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(run())


def measure(n: int, port: int, options: list[tuple[str, Any]], tls_dir: str) -> dict[str, float]:
    """Bytes of VmRSS per channel at each stage (this process: a fresh one per variant)."""
    import grpc

    from nodecompat.server.runtime.malloc_tuning import malloc_trim

    address = __import__("bench_inventory").node_address
    creds = None
    if tls_dir:
        d = Path(tls_dir)
        creds = grpc.ssl_channel_credentials((d / "ca.crt").read_bytes(), (d / "leaf.key").read_bytes(),
                                             (d / "leaf.crt").read_bytes())
        options = [*options, ("grpc.ssl_target_name_override", "localhost")]
    out: dict[str, float] = {}

    async def run() -> None:
        # warm up gRPC core and the loop with one channel of the same kind, so the base holds their fixed costs
        def make(i: int) -> Any:
            target = f"ipv4:{address(i, port)}"
            if creds is None:
                return grpc.aio.insecure_channel(target, options=options)
            return grpc.aio.secure_channel(target, creds, options=options)

        warm = make(n)
        await warm.unary_unary(f"/{SERVICE}/Unary")(b"", timeout=30)
        w = warm.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=3600)
        await w.read()
        gc.collect()
        malloc_trim()
        base = rss()
        sem = asyncio.Semaphore(64)
        chans = [make(i) for i in range(n)]

        async def ready(ch: Any) -> None:
            async with sem:
                await asyncio.wait_for(ch.channel_ready(), 60)

        await asyncio.gather(*(ready(ch) for ch in chans))
        await asyncio.sleep(0.5)
        out["connected"] = (rss() - base) / n
        calls = [ch.unary_unary(f"/{SERVICE}/Unary") for ch in chans]

        async def unary(call: Any) -> None:
            async with sem:
                await call(b"", timeout=30)

        await asyncio.gather(*(unary(c) for c in calls))
        await asyncio.sleep(0.5)
        out["after_unary"] = (rss() - base) / n
        streams: list[Any] = []

        async def watch(ch: Any) -> None:
            async with sem:  # opened 64 at a time, as InventorySync bounds its connecting streams
                s = ch.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=3600)
                streams.append(s)
                await s.read()

        await asyncio.gather(*(watch(ch) for ch in chans))
        await asyncio.sleep(0.5)
        out["stream_open"] = (rss() - base) / n
        gc.collect()
        malloc_trim()
        out["trimmed"] = (rss() - base) / n
        for s in streams:
            s.cancel()
        await asyncio.gather(*(ch.close() for ch in chans), warm.close())

    asyncio.run(run())
    return out


def variant_options(name: str) -> list[tuple[str, Any]]:
    """The options of a named variant: `pool` / `sync` (production), `pool+CANDIDATE[+...]`."""
    from nodecompat.server.fleet.channel_pool import CHANNEL_OPTIONS as POOL
    from nodecompat.server.inventory.inventory_sync import CHANNEL_OPTIONS as SYNC

    head, *extra = name.split("+")
    opts = list({"pool": POOL, "sync": SYNC}[head])
    for c in extra:
        names = {k for k, _ in CANDIDATES[c]}
        opts = [o for o in opts if o[0] not in names] + CANDIDATES[c]
    return opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--variants", default="pool,sync," + ",".join(f"pool+{c}" for c in CANDIDATES))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # variant port tls_dir
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # port_file tls_dir
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if args.serve:
        serve(*args.serve)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.child:
        from nodecompat.server.runtime.malloc_tuning import limit_arenas

        limit_arenas()  # as `nodecompat aggregator` does
        name, port, tls_dir = args.child
        print(json.dumps(measure(args.nodes, int(port), variant_options(name), tls_dir)), flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="chanargs-"))
    tls_dir = ""
    if args.tls:
        sys.path.insert(0, str(ROOT / "tests"))
        from support_fleet import make_certs  # type: ignore[import-not-found]

        make_certs(tmp / "certs")
        tls_dir = str(tmp / "certs")
    port_file = tmp / "port"
    with (tmp / "server.log").open("w") as server_log:
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file), tls_dir], stderr=server_log)
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = port_file.read_text()
        print(f"{args.nodes} channels, {'mutual TLS' if tls_dir else 'insecure'}; VmRSS growth per channel (bytes):")
        print(f"{'variant':32s} {'connected':>10s} {'+unary':>10s} {'+stream':>10s} {'trimmed':>10s}", flush=True)
        for name in args.variants.split(","):
            for _ in range(args.repeat):
                for _attempt in range(3):  # a stream cancelled under load (seen at 2,000 channels) reruns
                    res = subprocess.run([sys.executable, __file__, "--nodes", str(args.nodes), "--child", name,
                                          port, tls_dir], capture_output=True, text=True, env={**os.environ})
                    if not res.returncode:
                        break
                if res.returncode:
                    print(f"{name:32s} failed: {res.stderr.strip()[-600:]}", flush=True)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(f"{name:32s} {r['connected']:>10,.0f} {r['after_unary']:>10,.0f} {r['stream_open']:>10,.0f} "
                      f"{r['trimmed']:>10,.0f}", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
