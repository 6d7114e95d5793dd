"""gRPC servers: the node daemon, the fleet aggregator, interceptors and telemetry wiring.

Servicers here are thin: they convert messages, call the core and map domain errors to gRPC status
codes at this edge only.
"""

# Default addresses, on loopback so that a newcomer's `make run` is not exposed to the network.
DEFAULT_NODE_LISTEN = "127.0.0.1:50051"
DEFAULT_AGGREGATOR_LISTEN = "127.0.0.1:50050"
