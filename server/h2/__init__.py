"""The lean HTTP/2 gRPC client (no gRPC core channel): connection.py (frames, SETTINGS, PING, GOAWAY, keepalive,
the connection's state), watch.py (one server-streaming call, WatchFeatures), tls.py (TLS over memory BIOs),
call.py (what it shares with the gRPC path: errors, status mappings, options, spans, the request's frames).
Imports hyperframe and hpack: import it only where the h2 transport is chosen.
"""
