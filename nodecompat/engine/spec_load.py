"""Safe loading of spec text (YAML or JSON) into plain Python data, fast and bounded.

Specs come from registries, so loading must stay cheap whatever the text holds. PyYAML's own
composer is pure Python (7 s for a 1 MiB spec) and recursive, so instead we read libyaml's C event
stream (`yaml.CSafeLoader(text).get_event()`) and compose plain dicts/lists/strings ourselves with
an explicit stack. That is where the safety checks live:

- nesting depth is enforced while composing (a 10,000-deep `[[[[` stops at level 65, and aliases
  count with the depth of what they expand to);
- anchors and aliases are accepted, as NFD (sigs.k8s.io/yaml on go-yaml v2) accepts them, but every
  node an alias expands to counts against one node budget (MAX_YAML_NODES), so a billion-laughs
  document is refused after reading a few hundred bytes. An alias reuses the Python object its
  anchor produced (the spec builder never mutates loaded data), so expansion costs no copying;
- merge keys (`<<: *base`) follow go-yaml v2: applied in document order (a later key wins) and,
  for a list of maps, earlier maps win;
- duplicate keys are kept (the last one wins, as in go-yaml v2) and listed under `DUPS` so the
  spec builder can flag them; mapping keys must be scalars;
- scalars are resolved with PyYAML's YAML 1.1 resolver (the rules go-yaml v2 uses for int, float,
  bool and null); timestamps stay strings, as Go's YAML layer leaves them in string fields, and
  non-string scalars keep their spelling (`Scalar.raw`) so `value: [1.10]` (read by Go as "1.1")
  can be flagged. Tags other than the core ones (`!!binary`, `!!python/...`) are refused.

JSON text goes through `json.loads` (C) with a depth and node check. When libyaml is not compiled
into PyYAML, the same composer runs on the pure-Python `yaml.SafeLoader` event stream (slower, same
results and limits).

Split in modules: nodecompat.engine.spec_data (Scalar, DUPS, LoadError, go_string) and
nodecompat.engine.spec_load_json (the JSON reader); this module holds the YAML composer and load_document, and
re-exports the public names of spec_data.
"""

from __future__ import annotations

import time
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode

from nodecompat.engine.limits import MAX_DEPTH, MAX_EXPANDED_CHARS, MAX_SPEC_BYTES, MAX_YAML_NODES
from nodecompat.engine.spec_data import DUPS, LoadError, Scalar, go_string
from nodecompat.engine.spec_load_json import NOT_JSON, load_json

__all__ = ["DUPS", "EVENT_LOADER", "LoadError", "Scalar", "go_string", "load_document"]

# The libyaml event reader when PyYAML was built with it, else the pure-Python one (same events).
EVENT_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_Y = "tag:yaml.org,2002:"
_STR_TAGS = frozenset({_Y + "str", _Y + "timestamp", _Y + "value", _Y + "merge"})
_CONSTRUCT = {
    _Y + "int": SafeConstructor.construct_yaml_int,
    _Y + "float": SafeConstructor.construct_yaml_float,
    _Y + "bool": SafeConstructor.construct_yaml_bool,
    _Y + "null": SafeConstructor.construct_yaml_null,
}
_SEQ_TAGS = frozenset({None, "!", _Y + "seq"})
_MAP_TAGS = frozenset({None, "!", _Y + "map"})
_NO_KEY = object()
_MERGE_KEY = object()


class _Frame:
    """A sequence or mapping being composed."""

    __slots__ = (
        "anchor",
        "chars_before",
        "container",
        "explicit",
        "height",
        "is_map",
        "key",
        "line",
        "nodes_before",
    )

    def __init__(self, is_map: bool, anchor: str | None, line: int, nodes_before: int, chars_before: int = 0) -> None:
        self.chars_before = chars_before
        self.is_map = is_map
        self.container: Any = {} if is_map else []
        self.anchor = anchor
        self.line = line
        self.nodes_before = nodes_before
        self.height = 0  # levels of nesting below this one
        self.key: Any = _NO_KEY
        self.explicit: set[str] = set()


class _Composer:
    def __init__(self, text: str, max_nodes: int, max_depth: int, max_chars: int = MAX_EXPANDED_CHARS) -> None:
        self.loader = EVENT_LOADER(text)
        self.max_nodes = max_nodes
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.nodes = 0
        self.chars = 0  # scalar text in the document as its aliases expand it
        self.deadline: float | None = None
        self.anchors: dict[str, tuple[Any, int, int, int]] = {}  # name -> (object, nodes, height, chars)
        self.resolved: dict[tuple[str, Any], str] = {}
        self.constructor = SafeConstructor()

    def close(self) -> None:
        self.loader.dispose()

    # -- scalars -------------------------------------------------------------------------------
    def scalar(self, ev: ScalarEvent, line: int) -> Any:
        value: str = ev.value
        tag = ev.tag
        if tag is None or tag == "!":
            ck = (value, ev.implicit)
            tag = self.resolved.get(ck)
            if tag is None:
                tag = self.loader.resolve(ScalarNode, value, ev.implicit)
                self.resolved[ck] = tag
        if tag in _STR_TAGS:
            return value
        construct = _CONSTRUCT.get(tag)
        if construct is None:
            raise LoadError([f"line {line}: YAML tag {tag} is not accepted (only strings, numbers, booleans, null)"])
        try:
            return Scalar(construct(self.constructor, ScalarNode(tag, value)), value)
        except (ValueError, KeyError, TypeError, OverflowError, IndexError):  # `!!int` with no digits: IndexError
            raise LoadError([f"line {line}: {value!r} is not a valid {tag.rsplit(':', 1)[-1]}"]) from None

    # -- the document --------------------------------------------------------------------------
    def document(self) -> Any:
        get = self.loader.get_event
        get()  # StreamStartEvent
        ev = get()
        if type(ev) is StreamEndEvent:
            return None
        root = self.node_tree()
        ev = get()
        if type(ev) is not DocumentEndEvent:  # pragma: no cover - libyaml always ends a document
            raise LoadError(["not valid YAML: the document does not end"])
        ev = get()
        if type(ev) is DocumentStartEvent:
            raise LoadError(["the spec holds more than one YAML document; put one spec per file"])
        return root

    def node_tree(self) -> Any:
        get = self.loader.get_event
        stack: list[_Frame] = []
        events = 0
        while True:
            ev = get()
            cls = type(ev)
            line = ev.start_mark.line + 1
            events += 1
            if not events & 0xFFF and self.deadline is not None and time.monotonic() > self.deadline:
                raise TimeoutError(f"line {line}: the deadline passed while reading YAML")
            if cls is ScalarEvent:
                in_key = bool(stack) and stack[-1].is_map and stack[-1].key is _NO_KEY
                value: Any
                if in_key and ev.value == "<<" and ev.tag is None and ev.implicit[0]:
                    value = _MERGE_KEY  # a plain `<<` in key position
                else:
                    value = self.scalar(ev, line)
                count, height = 1, 0
                self.nodes += 1
                self.chars += len(ev.value)
                if self.nodes > self.max_nodes:
                    raise LoadError([f"line {line}: more than {self.max_nodes} YAML nodes"])
                if ev.anchor:
                    self.anchors[ev.anchor] = (value, 1, 0, len(ev.value))
            elif cls is AliasEvent:
                anchored = self.anchors.get(ev.anchor)
                if anchored is None:
                    raise LoadError([f"line {line}: alias *{ev.anchor} refers to no complete anchor above it"])
                value, count, height, chars = anchored
                self.nodes += count
                self.chars += chars
                if self.chars > self.max_chars:
                    raise LoadError(
                        [
                            f"line {line}: YAML alias expansion too large: *{ev.anchor} takes the document "
                            f"past {self.max_chars} characters of text (MAX_EXPANDED_CHARS)"
                        ]
                    )
                if self.nodes > self.max_nodes:
                    raise LoadError(
                        [
                            f"line {line}: YAML alias expansion too large (billion laughs?): "
                            f"*{ev.anchor} takes the document past {self.max_nodes} nodes"
                        ]
                    )
                if len(stack) + height > self.max_depth:
                    raise LoadError(
                        [f"line {line}: nesting deeper than {self.max_depth} levels (through *{ev.anchor})"]
                    )
            elif cls is SequenceStartEvent or cls is MappingStartEvent:
                is_map = cls is MappingStartEvent
                if ev.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                    raise LoadError([f"line {line}: YAML tag {ev.tag} is not accepted"])
                if len(stack) >= self.max_depth:
                    raise LoadError([f"line {line}: nesting deeper than {self.max_depth} levels"])
                if stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                    raise LoadError([f"line {line}: a mapping key must be a string or number, not a collection"])
                self.nodes += 1
                if self.nodes > self.max_nodes:
                    raise LoadError([f"line {line}: more than {self.max_nodes} YAML nodes"])
                stack.append(_Frame(is_map, ev.anchor, line, self.nodes - 1, self.chars))
                continue
            elif cls is SequenceEndEvent or cls is MappingEndEvent:
                f = stack.pop()
                value = f.container
                count, height = self.nodes - f.nodes_before, f.height + 1
                if f.anchor:
                    self.anchors[f.anchor] = (value, count, height, self.chars - f.chars_before)
            else:  # pragma: no cover - a well-formed event stream has nothing else here
                raise LoadError([f"line {line}: unexpected YAML event {cls.__name__}"])
            if not stack:
                return value
            self.deliver(stack[-1], value, height, line)

    def deliver(self, parent: _Frame, value: Any, height: int, line: int) -> None:
        if height > parent.height:
            parent.height = height
        if not parent.is_map:
            parent.container.append(value)
            return
        if parent.key is _NO_KEY:
            if value is _MERGE_KEY:
                parent.key = _MERGE_KEY
            elif isinstance(value, str):
                parent.key = value
            elif isinstance(value, Scalar):
                parent.key = go_string(value)
            else:
                raise LoadError([f"line {line}: a mapping key must be a string or number, not a collection"])
            return
        key, parent.key = parent.key, _NO_KEY
        out = parent.container
        if key is _MERGE_KEY:
            self.merge(out, value, line)
            return
        if key in parent.explicit:
            out.setdefault(DUPS, []).append(key)  # the last one wins (go-yaml v2)
        parent.explicit.add(key)
        out[key] = value

    def merge(self, out: dict[str, Any], value: Any, line: int) -> None:
        maps = list(reversed(value)) if isinstance(value, list) else [value]
        for m in maps:
            if not isinstance(m, dict):
                raise LoadError([f"line {line}: a merge key (<<) needs a mapping or a list of mappings"])
            for k, v in m.items():
                if k != DUPS:
                    out[k] = v
                    self.nodes += 1
        if self.nodes > self.max_nodes:
            raise LoadError(
                [
                    f"line {line}: YAML alias expansion too large (billion laughs?): merges take "
                    f"the document past {self.max_nodes} nodes"
                ]
            )


def load_document(
    text: str | bytes,
    max_bytes: int = MAX_SPEC_BYTES,
    max_nodes: int = MAX_YAML_NODES,
    deadline: float | None = None,
) -> Any:
    """Parse YAML or JSON text safely into plain data (non-string scalars as `Scalar`).

    LoadError for unusable text; TimeoutError once `deadline` (time.monotonic()) passes."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise LoadError([f"spec is {size} bytes, over the {max_bytes}-byte limit"])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise LoadError([f"spec is not UTF-8 text: {exc}"]) from None
    if text.lstrip().startswith(("{", "[")):
        data = load_json(text, max_nodes)
        if data is not NOT_JSON:
            return data
    composer = _Composer(text, max_nodes, MAX_DEPTH)
    composer.deadline = deadline
    try:
        return composer.document()
    except yaml.YAMLError as exc:
        raise LoadError([f"not valid YAML or JSON: {exc}".replace("\n", " ")]) from None
    finally:
        composer.close()
