"""Reading the files people name on the command line: bounded, decoded, errors that name the file.

A spec or snapshot path may be a FIFO, /dev/zero, a directory or a binary: every command reads at most
a limit's worth (never the whole of an endless stream) and says which file and flag were wrong.
"""

from __future__ import annotations

import sys


class InputError(ValueError):
    """A named input could not be used; the message names it."""


def read_bytes_limited(path: str, limit: int, what: str) -> bytes:
    """Up to `limit` bytes of `path` ("-" is stdin); InputError when unreadable or larger."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{what} {path} is larger than {limit} bytes")
    return data


def read_text_limited(path: str, limit: int, what: str) -> str:
    """As read_bytes_limited, decoded as UTF-8 (a BOM is dropped)."""
    data = read_bytes_limited(path, limit, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
