"""nodecompat: will this container image run well on that machine, and on which machines of a fleet?

The core package holds the feature model, spec parsing, the rule engine and the OCI client; it never
imports grpc. `nodecompat.probes`, `nodecompat.server` and `nodecompat.clients` live in the
top-level folders probes/, server/ and clients/ and are mapped here by pyproject.
"""

__version__ = "0.1.0"
