"""HOST:PORT addresses as people type them (--listen, --node, --register, --advertise, nodes files).

gRPC accepts `127.0.0.1:99999` and quietly dials port 34463 (the number wraps), and an address with a
wildcard host cannot be dialled by anyone else; both are caught here, once, for every flag and file.
"""

from __future__ import annotations

import ipaddress


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT or [V6]:PORT -> (host, port); ValueError with the reason otherwise."""
    address = address.strip()
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{address!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{address!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    if not host:
        raise ValueError(f"{address!r}: empty host")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: port must be 1-65535")
    return host, int(port_text)


def is_wildcard_host(host: str) -> bool:
    """True for a host nobody can dial: empty, `*`, or an unspecified IP (0.0.0.0, ::, [::], 0::0...)."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_unspecified
    except ValueError:
        return False
