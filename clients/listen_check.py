"""Checking a --listen address before gRPC binds it.

gRPC's core logs its own line (`E... add_port.cc:83] Failed to add port to server: ...`) on stderr when
a bind fails, before our readable message, and its failure does not say whether the port is busy or
the host unknown. So the servers' commands try the bind themselves first, with the same socket options
gRPC uses (SO_REUSEADDR, no SO_REUSEPORT), and say which it is and what to do.
"""

from __future__ import annotations

import errno
import socket
from typing import Any


def _literal(host: str, port: int) -> list[tuple[Any, Any, int, str, Any]] | None:
    """getaddrinfo's answer for an IP literal, without getaddrinfo (which imports the idna codec, a few
    ms of a server's start); None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return [(family, socket.SOCK_STREAM, 0, "", (host, port))]
    return None


def listen_problem(listen: str, flag: str = "--listen") -> str:
    """What stops a server listening on HOST:PORT, or "" (port 0, a free port, is always fine)."""
    from nodecompat.hostport import split_address

    if listen.rpartition(":")[2] == "0":  # any free port: nothing to check
        return ""
    try:
        host, port = split_address(listen)
    except ValueError as exc:
        return f"{flag} {exc}"
    infos: list[tuple[Any, Any, int, str, Any]] | None = _literal(host, port)
    if infos is None:
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as exc:
            return f"{flag} {listen}: host {host!r} does not resolve ({exc.strerror or exc})"
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (f"{flag} {listen}: port {port} is already in use (another `nodecompat serve`, "
                            f"`make run` or aggregator?): stop it, or choose a free port with {flag} HOST:PORT "
                            "(`make run LISTEN=HOST:PORT`)")
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{flag} {listen}: {host} is not an address of this machine"
                if exc.errno == errno.EACCES:
                    return f"{flag} {listen}: not allowed to listen on port {port} (ports below 1024 need root)"
                return f"{flag} {listen}: cannot listen: {exc.strerror or exc}"
    return ""
