"""The aggregator's memory of the fleet: who is in it (nodes file, DNS, registrations and their leases), each
node's latest features (streamed or pushed), the answers given from them, and the etcd store replicas share.
"""
