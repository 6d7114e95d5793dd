"""Where the aggregator's memory per streamed node (nodes file / DNS: one WatchFeatures stream each) goes.

bench_inventory.py prints one figure, the RSS growth while 10,000 streams are held. This splits it, each mode in
a fresh process against a simulator child (one server on 0.0.0.0:PORT, every node its own loopback address as
in bench_inventory.py; each node's messages are what bench/inventory_stream_sim.py sends, a current daemon's):

- `channels`: InventorySync's channels (its options, its targets), connected (channel_ready), no stream;
- `streams`: a real InventorySync. The simulator answers each stream with its initial metadata and holds the
  first message back until told, so the stages are: streams open (no message), first messages held, after
  gc.collect(), after malloc_trim(0).

Each stage prints, per node, the growth of RSS and Anonymous (/proc/self/smaps_rollup) and of glibc malloc's
bytes in use and obtained from the system (malloc_info, all arenas); the rest of RSS is Python's own arenas
(pymalloc), mapped outside malloc. `--tracemalloc` adds the Python objects' bytes a node (it inflates the other
figures: its traces are malloc'd). `--tls DIR` runs both ends with mutual TLS (DIR holds ca.crt, leaf.crt,
leaf.key with DNS:localhost, as tests/support_fleet.py make_certs writes; the authority is set to localhost).

    .venv/bin/python bench/streams_breakdown.py {channels,streams} [--nodes 1000] [--tls DIR] [--tracemalloc]
        [--transport {grpc,h2}]

`--transport h2` runs the streams on the lean client (server/h2/watch.py, SyncConfig.watch_transport);
`streams` also prints the aggregator's CPU a node (process CPU from start until every first message is held).

`args` runs bench/channel_args.py (its own options follow): the bytes a channel costs connected, after one unary
call and with a stream open, for each candidate gRPC core channel argument alone, plain or mutual TLS.

    .venv/bin/python bench/streams_breakdown.py args [--nodes 2000] [--tls] [--variants ...] [--repeat 1]

No asserts: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROFILES = 20


def smaps_rollup() -> dict[str, int]:
    """/proc/self/smaps_rollup's fields in bytes."""
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0]) * 1024
    return out


def malloc_totals() -> dict[str, int]:
    """glibc malloc_info's totals over all arenas: system (bytes obtained), free (fast + rest), mmap."""
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(fp))
        libc.fclose(ctypes.c_void_p(fp))
        text = Path(tmp.name).read_text()
    tail = text[text.rindex("</heap>"):]

    def num(pattern: str) -> int:
        m = re.search(pattern, tail)
        return int(m.group(1)) if m else 0

    free = num(r'<total type="fast" count="\d+" size="(\d+)"') + num(r'<total type="rest" count="\d+" size="(\d+)"')
    return {"system": num(r'<system type="current" size="(\d+)"'), "free": free, "arenas": text.count("<heap nr=")}


class Stages:
    def __init__(self, n: int, traced: bool) -> None:
        self.n, self.traced = n, traced
        self.base = self._now()

    def _now(self) -> dict[str, int]:
        s, m = smaps_rollup(), malloc_totals()
        py = tracemalloc.get_traced_memory()[0] if self.traced else 0
        return {"rss": s["Rss"], "anon": s["Anonymous"], "sys": m["system"], "used": m["system"] - m["free"],
                "py": py, "arenas": m["arenas"]}

    def show(self, label: str) -> None:
        now = self._now()
        d = {k: (now[k] - self.base[k]) / self.n for k in now}
        py = f" | Python objects {d['py']:7,.0f}" if self.traced else ""
        print(f"{label:30s} RSS {d['rss']:7,.0f} B a node | anon {d['anon']:7,.0f} | malloc in use {d['used']:7,.0f}"
              f" | malloc from the system {d['sys']:7,.0f} ({now['arenas']} arenas){py}", flush=True)


def simulator(port_file: str, n: int, gate: str, tls_dir: str) -> None:
    """Serve WatchFeatures for n nodes: initial metadata at once, the first message once `gate` exists."""
    import grpc
    from inventory_stream_sim import node_messages

    from nodecompat.v1 import inventory_pb2

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    first, beats = node_messages(n, PROFILES, time.time_ns())  # what current daemons send, as bench_inventory's
    opened = [0]

    async def watch(request: Any, context: Any) -> Any:
        i = opened[0] % n
        opened[0] += 1
        await context.send_initial_metadata(())
        while not os.path.exists(gate):
            await asyncio.sleep(0.2)
        yield first[i]
        while True:
            await asyncio.sleep(request.heartbeat_seconds or 10)
            yield beats[i]

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("nodecompat.v1.NodeService", {
            "WatchFeatures": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=inventory_pb2.WatchFeaturesRequest.FromString)}),))
        if tls_dir:
            d = Path(tls_dir)
            creds = grpc.ssl_server_credentials([((d / "leaf.key").read_bytes(), (d / "leaf.crt").read_bytes())],
                                                root_certificates=(d / "ca.crt").read_bytes(), require_client_auth=True)
            port = server.add_secure_port("0.0.0.0:0", creds)
        else:
            port = server.add_insecure_port("0.0.0.0:0")
        await server.start()
        Path(port_file).write_text(str(port))
        while True:
            Path(port_file + ".opened").write_text(str(opened[0]))
            await asyncio.sleep(0.2)

    asyncio.run(run())


def localhost_h2() -> None:
    """The simulator's certificate names localhost: the h2 streams' :authority and TLS name (as the gRPC path's
    grpc.default_authority patch below), one options object for every stream."""
    from dataclasses import replace

    from nodecompat.server.h2 import watch as h2_watch

    base = h2_watch.H2Watch
    shared: dict[int, Any] = {}

    class LocalhostWatch(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def __init__(self, address: str, request: bytes, options: Any, deserialize: Any) -> None:
            opts = shared.setdefault(id(options), replace(options, authority="localhost"))
            super().__init__(address, request, opts, deserialize)

    h2_watch.H2Watch = LocalhostWatch  # type: ignore[misc]


def main() -> None:
    if sys.argv[1:2] == ["args"]:  # per channel argument: bench/channel_args.py, with the options that follow
        sys.path.insert(0, str(ROOT / "bench"))
        import channel_args  # type: ignore[import-not-found]

        del sys.argv[1]
        channel_args.main()
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["channels", "streams"])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--tls", default="", help="directory with ca.crt, leaf.crt, leaf.key (DNS:localhost)")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--transport", choices=["grpc", "h2"], default="grpc", help="SyncConfig.watch_transport")
    ap.add_argument("--simulator", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if args.simulator:
        simulator(args.simulator[0], args.nodes, args.simulator[1], args.tls)
        return
    from nodecompat.server.runtime.malloc_tuning import limit_arenas, malloc_trim

    limit_arenas()  # as `nodecompat aggregator` does, before any thread starts
    from bench_inventory import node_address
    from inventory_push_sim import count_held  # type: ignore[import-not-found]

    from nodecompat.fleet.store import FeatureStore
    from nodecompat.server import tls
    from nodecompat.server.inventory import inventory_sync
    from nodecompat.server.inventory.fleet_nodes import FleetNode
    from nodecompat.server.runtime.gc_tuning import tune_for_serving

    n = args.nodes
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="streams-breakdown-"))
    port_file, gate = tmp / "port", tmp / "gate"
    if args.mode == "channels":
        gate.write_text("")
    sim = subprocess.Popen([sys.executable, __file__, args.mode, "--nodes", str(n), "--tls", args.tls, "--simulator",
                            str(port_file), str(gate)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        credentials = files = None
        if args.tls:
            d = Path(args.tls)
            credentials = tls.channel_credentials(d / "ca.crt", d / "leaf.crt", d / "leaf.key")
            files = tls.ClientTls(str(d / "ca.crt"), str(d / "leaf.crt"), str(d / "leaf.key"))
            if args.transport == "h2":
                localhost_h2()
            options = [*inventory_sync.CHANNEL_OPTIONS, ("grpc.default_authority", "localhost")]
            inventory_sync.channel_target = lambda a: (f"ipv4:{a}", options)  # the certificate names localhost
        members = [FleetNode(f"sim-{i:05d}", node_address(i, port), {}, "file") for i in range(n)]
        store = FeatureStore()
        held, all_held = count_held(store, n)
        tune_for_serving()
        if args.tracemalloc:
            tracemalloc.start()
        stages = Stages(n, args.tracemalloc)
        t0 = time.perf_counter()
        if args.mode == "channels":
            sync = inventory_sync.InventorySync(lambda: [], store, credentials=credentials)
            sync.start()
            channels = []

            async def connect() -> None:
                sem = asyncio.Semaphore(64)

                async def one(address: str) -> None:
                    async with sem:
                        ch = sync.channel(address)
                        channels.append(ch)
                        await asyncio.wait_for(ch.channel_ready(), 60)

                await asyncio.gather(*(one(m.address) for m in members))

            asyncio.run_coroutine_threadsafe(connect(), sync.loop).result(600)
            print(f"{n} channels connected in {time.perf_counter() - t0:.1f} s")
            stages.show("channels connected")
            return
        config = inventory_sync.SyncConfig(heartbeat=10.0, connect_slot_seconds=0.02,  # no first message to wait for
                                           watch_transport=args.transport, watch_tls=files)
        cpu0 = time.process_time()
        sync = inventory_sync.InventorySync(lambda: members, store, credentials=credentials, config=config)
        sync.start()
        opened = Path(f"{port_file}.opened")
        while int(opened.read_text() or 0) < n:
            time.sleep(0.2)
        time.sleep(1.0)
        print(f"{n} streams open in {time.perf_counter() - t0:.1f} s")
        stages.show("streams open (no message)")
        gate.write_text("")
        all_held.wait(600)
        time.sleep(0.5)
        cpu = time.process_time() - cpu0
        print(f"{held[0]} nodes held ({args.transport}); aggregator CPU {cpu:.2f} s = {cpu / n * 1e3:.3f} ms a node; "
              f"all held {time.perf_counter() - t0:.1f} s after start")
        stages.show("first messages held")
        gc.collect()
        stages.show("+ gc.collect()")
        malloc_trim()
        stages.show("+ malloc_trim(0)")
        sync.stop()
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
