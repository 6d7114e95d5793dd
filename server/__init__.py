"""gRPC servers: the node daemon, the fleet aggregator, interceptors and telemetry wiring.

Servicers here are thin: they convert messages, call the core and map domain errors to gRPC status
codes at this edge only.
"""
