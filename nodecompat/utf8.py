"""Host text as UTF-8: names read from the host that are not UTF-8, carried escaped.

Linux allows any byte but / and NUL in a file name (and any but /, : and whitespace in an interface name);
Python reads such names with surrogate escapes (os.fsdecode: the byte 0xff becomes U+DCFF), which neither a
protobuf string nor UTF-8 JSON can carry. A probe's note naming such a file (features.d) or a feature value from
such a listing (/sys/class/net/<name>) is therefore carried with the bytes escaped as Python's backslashreplace
shows them (b"eth\\xff" -> "eth\\\\xff"). The wire (nodecompat/wire.py) and the fingerprint
(nodecompat/fleet/fingerprint.py) escape alike, so a node's fingerprint is the one its receiver computes from
what it was sent. Both first try the text as it is: only a set that fails to encode is looked at string by string.
The CLI's local outputs (`nodecompat features` -o json and its table, `nodecompat validate`'s verdict in every
format) spell such names the same way (utf8_round, utf8_json), so a snapshot or a verdict written on the machine
reads as the daemon's answer about it: eth\\xff, never the surrogate escape eth\\udcff JSON would write.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from nodecompat.features import AttributeFeature, Features, FlagFeature, Instance, InstanceFeature

if TYPE_CHECKING:
    from nodecompat.probes.probe_round import ProbeRound


def utf8_text(text: str) -> str:
    """`text` with its surrogate escapes replaced by the escaped bytes they stand for (other lone surrogates:
    \\udXXX); UTF-8 text is returned as it is."""
    if text.isascii():
        return text
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no fsdecode made
        return text.encode("utf-8", "backslashreplace").decode()


def utf8_features(f: Features) -> Features:
    """A copy of `f` with every name, element and value through utf8_text (O(strings): for a set that failed to
    encode only)."""
    t = utf8_text
    return Features(
        flags={t(n): FlagFeature({t(e) for e in v.elements}) for n, v in f.flags.items()},
        attributes={t(n): AttributeFeature({t(k): t(x) for k, x in v.elements.items()})
                    for n, v in f.attributes.items()},
        instances={t(n): InstanceFeature([Instance({t(k): t(x) for k, x in i.attributes.items()})
                                          for i in v.elements]) for n, v in f.instances.items()},
    )


def utf8_mapping(m: Mapping[str, str]) -> dict[str, str]:
    """A copy of `m` with its keys and values through utf8_text."""
    return {utf8_text(k): utf8_text(v) for k, v in m.items()}


def utf8_json(data: Any) -> Any:
    """A copy of JSON-like `data` (dicts, lists, strings and other scalars) with every string, keys included,
    through utf8_text; other values are kept as they are."""
    if isinstance(data, str):
        return utf8_text(data)
    if isinstance(data, dict):
        return {utf8_json(k): utf8_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [utf8_json(x) for x in data]
    return data


def utf8_round(rnd: ProbeRound) -> ProbeRound:
    """A copy of a probe round with its features (utf8_features) and each probe's error and notes through
    utf8_text: the round as the daemon's answers spell it (wire.features_to_proto, wire.status_to_proto)."""
    statuses = [replace(st, error=utf8_text(st.error), notes=[utf8_text(n) for n in st.notes]) for st in rnd.statuses]
    return replace(rnd, features=utf8_features(rnd.features), statuses=statuses)
