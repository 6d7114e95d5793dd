"""How the servers run: the grpc.aio runtime and its call contexts, fast paths, read deadlines, and process tuning.

Shared by the node daemon (server/node) and the aggregator (server/fleet); nothing here knows a servicer.
"""
