"""Probe plugins: each module reads one part of the host and returns NFD-shaped features.

The interface is `nodecompat.probes.base.Probe`; built-in probes register through the same
entry-point group (`nodecompat.probes`) that third-party probes use (see registry.py).
"""
