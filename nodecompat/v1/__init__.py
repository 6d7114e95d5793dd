"""Generated protobuf/gRPC code for nodecompat.v1 (do not edit)."""
