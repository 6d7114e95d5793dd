"""The lean HTTP/2 gRPC client (no gRPC core channel). Streams: watch.py (one server-streaming call a
connection, WatchFeatures) on connection.py (its frames, SETTINGS, PING, GOAWAY, keepalive). Unary calls:
unary.py (H2Channel: one connection a node address, calls multiplexed; the fan-out's --fanout-transport h2) on
mux.py (the multiplexed connection) and streams.py (a call's DATA, headers, trailers). Shared: tls.py (TLS over
memory BIOs), call.py (what it shares with the gRPC path: errors, status mappings, options, spans).
Imports hyperframe and hpack: import it only where the h2 transport is chosen.
"""
