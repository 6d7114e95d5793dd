"""Spec text that is JSON, read with `json.loads` (C) into the same plain data the YAML composer makes.

Depth and node counts are checked after parsing (MAX_DEPTH, the caller's node budget; a RecursionError is a
depth error); duplicate keys are listed under DUPS (the last one wins, as Go's decoders do); null and booleans
become `Scalar`s, numbers keep their spelling, and a lone surrogate escape becomes U+FFFD as in Go's decoder.
Text that is not JSON is handed back to nodecompat.engine.spec_load's YAML composer (NOT_JSON).
"""

from __future__ import annotations

import json
import re
from typing import Any

from nodecompat.engine.limits import MAX_DEPTH
from nodecompat.engine.spec_data import DUPS, LoadError, Scalar


def _json_shape(obj: Any) -> tuple[int, int]:
    """(depth, nodes) of parsed JSON, walked iteratively."""
    depth = nodes = 0
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        nodes += 1
        if isinstance(o, dict | list):
            depth = max(depth, d)
            stack.extend((c, d + 1) for c in (o.values() if isinstance(o, dict) else o))
    return depth, nodes


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(s: str) -> str:
    """A JSON string as Go's decoder leaves it: a lone surrogate escape (`"\\ud800"`) becomes U+FFFD
    (Python keeps it, and it cannot be encoded as UTF-8 into a reply)."""
    return _SURROGATE.sub("\ufffd", s) if _SURROGATE.search(s) else s


def _wrap_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {(_text(k) if k != DUPS else k): _wrap_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_wrap_json(v) for v in obj]
    if isinstance(obj, str):
        return _text(obj)
    if obj is None or isinstance(obj, bool):
        return Scalar(obj, json.dumps(obj))
    return obj


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups = []
    for k, v in pairs:
        if k in out:
            dups.append(k)
        out[k] = v
    if dups:
        out[DUPS] = dups
    return out


NOT_JSON = object()


def load_json(text: str, max_nodes: int) -> Any:
    """`text` as JSON data, NOT_JSON when it is not JSON; LoadError past MAX_DEPTH or `max_nodes` values."""
    try:
        data = json.loads(
            text,
            object_pairs_hook=_json_pairs,
            parse_float=lambda s: Scalar(float(s), s),
            parse_int=lambda s: Scalar(int(s), s),
        )
    except RecursionError:
        raise LoadError([f"nesting deeper than {MAX_DEPTH} levels"]) from None
    except ValueError:
        return NOT_JSON
    depth, nodes = _json_shape(data)
    if depth > MAX_DEPTH:
        raise LoadError([f"nesting deeper than {MAX_DEPTH} levels"])
    if nodes > max_nodes:
        raise LoadError([f"more than {max_nodes} JSON values"])
    return _wrap_json(data)
