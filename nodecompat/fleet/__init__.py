"""The fleet's memory, in the core (no grpc): feature-set fingerprints, the inventory store that keeps
each distinct feature set once, why-not counts over verdicts, and what-if matrices."""
