"""Defaults of the servers' denial-of-service limits, in one grpc-free module (the CLI imports it to print
them in --help without loading grpc). docs/security.md ("Limits") lists each with the reason for it."""

# server/runtime/runtime.py: admission and call duration
WORKERS = 16  # threads running blocking work (evaluation, registry fetches, probe rounds)
MAX_CONCURRENT_CALLS = 64  # work calls admitted at once (Health and reflection are not counted)
DAEMON_MAX_CALL_SECONDS = 120.0  # a call without a deadline (or a longer one) ends by then
AGGREGATOR_MAX_CALL_SECONDS = 600.0
REQUEST_TIMEOUT = 10.0  # the request message must arrive within this of the call's start (half-open calls)

# server/node/feature_cache.py: GetFeatures(refresh=true) runs a probe round at most once per this many seconds
MIN_REFRESH_INTERVAL = 5.0

# server/fleet/list_pages.py: ListNodes pages (DEFAULT_PAGE_SIZE 500, MAX_PAGE_SIZE 1000 there)

# server/runtime/grpc_server.py: connections
MAX_CONNECTION_IDLE = 30.0  # s without a call: the connection is closed (GOAWAY)
# (no grpc.max_concurrent_streams: with it, gRPC core refuses new streams, Health's too, under a flood;
# half-open calls are bounded by REQUEST_TIMEOUT instead)
KEEPALIVE_TIME = 60.0
KEEPALIVE_TIMEOUT = 20.0

# server/fleet/channel_pool.py: the aggregator's pooled node connections (`aggregator --pool-mib`). What one connected
# grpc.aio channel costs the aggregator, measured (grpcio 1.85, 1,000 channels to one simulator, live malloc
# bytes and anonymous RSS): ~3.8 KiB made, ~26.5 KiB connected, ~29.3 KiB after its first call, plus ~1.8 KiB
# of Python objects (aio Channel, its WeakSet of calls, PoolEntry); no channel argument shrinks it much.
CONNECTION_BYTES = 36 * 1024
# The pool's default byte budget: ~2,700 connections kept warm between fan-outs. The trade-off: a smaller
# budget holds less memory and makes every node past it reconnect on each fan-out (bench_fleet, 1,000 nodes,
# 3 runs: all kept, 34.8-35.4 KiB RSS per known node right after a fan-out and fan-out/floor 1.12-1.23; 227
# kept (8 MiB) 17.1-17.4 KiB and median 1.88; docs/security.md, "Aggregator memory and --pool-mib").
MAX_POOL_BYTES = 96 * 1024 * 1024
# What the pool keeps per node address with --fanout-transport h2 (server/h2/unary.py: its channel and connection,
# the asyncio transport and socket, the pool entry and its two method objects), the unit of the same budget:
# 2,000 connections after two calls each, ~3.2 KB of Python objects a connection (tracemalloc); bench_fleet,
# 1,000 nodes, 8.2-8.3 KiB RSS per known node right after a fan-out with all of them kept.
H2_CONNECTION_BYTES = 4 * 1024
# The same under TLS: OpenSSL's per-connection state (the session, the peer's certificate chain) is most of it
# (500 H2Channels to one mTLS grpc.aio server, two calls each, RSS growth: ~31.5 KB a connection).
H2_TLS_CONNECTION_BYTES = 32 * 1024
