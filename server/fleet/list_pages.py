"""ListNodes pages: a fleet of any size is listed in bounded answers.

Nodes are ordered by (name, address); a page token names the last node of the previous page, so a page
stays correct when nodes join or leave between calls (no offsets that shift). Tokens are opaque to
callers (base64url of JSON) and checked like any other input. Follows Google AIP-158 (page_size 0 means
the default, larger ones are coerced to the maximum, a malformed token is INVALID_ARGUMENT).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import TypeVar

from nodecompat.server.inventory.fleet_nodes import NodeView

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 2048

V = TypeVar("V", bound=NodeView)


class PageTokenError(ValueError):
    """A page_size or page_token the caller must fix (INVALID_ARGUMENT)."""


def _key(view: NodeView) -> tuple[str, str]:
    return (view.node.name, view.node.address)


def encode_token(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def decode_token(token: str) -> tuple[str, str] | None:
    """The (name, address) a token continues after; None for the first page. PageTokenError when bad."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS:
        raise PageTokenError(f"page_token is longer than {MAX_TOKEN_CHARS} characters: pass next_page_token as given")
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(x, str) for x in value)):
        raise PageTokenError("page_token is not one this aggregator gave: pass next_page_token as given")
    return (value[0], value[1])


def page_size(requested: int) -> int:
    """The page size for a request's page_size (0: DEFAULT_PAGE_SIZE, at most MAX_PAGE_SIZE)."""
    if requested < 0:
        raise PageTokenError(f"page_size must be >= 0 (0: {DEFAULT_PAGE_SIZE}), got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def page(views: Sequence[V], requested_size: int, token: str) -> tuple[list[V], str]:
    """(this page's views in (name, address) order, next_page_token or "")."""
    size = page_size(requested_size)
    after = decode_token(token)
    ordered = sorted(views, key=_key)
    if after is not None:
        ordered = [v for v in ordered if _key(v) > after]
    out = ordered[:size]
    more = len(ordered) > size
    return out, encode_token(_key(out[-1])) if more and out else ""
