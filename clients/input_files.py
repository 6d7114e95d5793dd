"""Reading the files people name on the command line: bounded, decoded, errors that name the file.

A spec or snapshot path may be a FIFO, /dev/zero, a directory or a binary: every command reads at most
a limit's worth (never the whole of an endless stream) and says which file and flag were wrong.
"""

from __future__ import annotations

import re
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


# PyYAML names the stream it parsed `<unicode string>`: the CLI knows the file, so it says that instead.
_YAML_MARK_RE = re.compile(r'\s*in "<unicode string>", line (\d+), column (\d+)')


def locate(problem: str, path: str) -> str:
    """`PATH:LINE:COLUMN: problem` for a problem carrying PyYAML's position mark, else `PATH: problem`
    ("-" is called <stdin>)."""
    name = "<stdin>" if path == "-" else path
    marks = _YAML_MARK_RE.findall(problem)
    if marks:
        line, column = marks[-1]
        return f"{name}:{line}:{column}: {_YAML_MARK_RE.sub('', problem)}"
    return f"{name}: {problem}"
