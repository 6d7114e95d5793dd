"""The Python client library and the `nodecompat` command-line interface."""
