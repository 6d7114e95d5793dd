"""Conversions between the core's dataclasses and the nodecompat.v1 protobuf messages.

The verdict dataclasses mirror validation.proto field for field, so one generic converter serves them
all; the feature model needs its own because NFD's flag sets are maps of empty objects on NFD's wire
but repeated strings in our proto.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from nodecompat.features import AttributeFeature, Features, FlagFeature, Instance, InstanceFeature
from nodecompat.probes.probe_round import ProbeRound, ProbeStatus
from nodecompat.utf8 import utf8_features, utf8_text
from nodecompat.v1 import features_pb2

M = TypeVar("M", bound=Message)


def features_to_proto(f: Features) -> features_pb2.Features:
    """The features as a message; a name or value that is not UTF-8 (a host name read with surrogate escapes,
    e.g. an interface called eth<0xff>) is carried escaped (nodecompat/utf8.py), never failing the whole answer."""
    try:
        return _features_to_proto(f)
    except UnicodeEncodeError:  # rare: only then is every string looked at
        return _features_to_proto(utf8_features(f))


def _features_to_proto(f: Features) -> features_pb2.Features:
    msg = features_pb2.Features()
    for name, flag in f.flags.items():
        msg.flags[name].elements.extend(sorted(flag.elements))
    for name, attr in f.attributes.items():
        msg.attributes[name].elements.update(attr.elements)
    for name, inst in f.instances.items():
        target = msg.instances[name]
        for x in inst.elements:
            target.elements.add().attributes.update(x.attributes)
    return msg


def features_from_proto(msg: features_pb2.Features) -> Features:
    return Features(
        flags={n: FlagFeature(set(v.elements)) for n, v in msg.flags.items()},
        attributes={n: AttributeFeature(dict(v.elements)) for n, v in msg.attributes.items()},
        instances={
            n: InstanceFeature([Instance(dict(x.attributes)) for x in v.elements]) for n, v in msg.instances.items()
        },
    )


def status_to_proto(st: ProbeStatus) -> features_pb2.ProbeStatus:
    """A probe's status as a message; its error and notes may name host files that are not UTF-8
    (nodecompat/utf8.py)."""
    try:
        return _status_to_proto(st, st.error, st.notes)
    except UnicodeEncodeError:
        return _status_to_proto(st, utf8_text(st.error), [utf8_text(n) for n in st.notes])


def _status_to_proto(st: ProbeStatus, error: str, notes: list[str]) -> features_pb2.ProbeStatus:
    return features_pb2.ProbeStatus(
        name=st.name,
        ok=st.ok,
        error=error,
        duration_seconds=st.duration_seconds,
        features=st.features,
        notes=notes,
        timed_out=st.timed_out,
    )


def status_from_proto(msg: features_pb2.ProbeStatus) -> ProbeStatus:
    return ProbeStatus(
        name=msg.name,
        ok=msg.ok,
        error=msg.error,
        duration_seconds=msg.duration_seconds,
        features=list(msg.features),
        notes=list(msg.notes),
        timed_out=msg.timed_out,
    )


def round_from_response(msg: features_pb2.GetFeaturesResponse) -> ProbeRound:
    probed_at = msg.probed_at.ToDatetime(tzinfo=UTC) if msg.HasField("probed_at") else datetime.now(UTC)
    return ProbeRound(
        features=features_from_proto(msg.features),
        statuses=[status_from_proto(s) for s in msg.probes],
        probed_at=probed_at,
    )


def statuses_to_json(statuses: Iterable[ProbeStatus]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(s) for s in statuses]


def statuses_from_json(data: Iterable[Mapping[str, Any]]) -> list[ProbeStatus]:
    fields = {f.name for f in dataclasses.fields(ProbeStatus)}
    return [ProbeStatus(**{k: v for k, v in d.items() if k in fields}) for d in data]


# -- generic dataclass <-> message (verdicts) ------------------------------------------------------
def to_message(obj: Any, msg_cls: type[M]) -> M:
    """Fill a message from a dataclass whose fields carry the message's field names.

    The descriptor is walked once per (dataclass, message) pair into a plan (_plan); each call then
    fills the message top-down (repeated messages through `.add()`, so nothing is built twice and
    copied), skipping scalar defaults, which proto3 does not serialize anyway."""
    msg = msg_cls()
    _fill(msg, obj)
    return msg


def fill(msg: Message, obj: Any) -> None:
    """to_message into an existing message (e.g. a sub-message of the response being built)."""
    msg.SetInParent()
    _fill(msg, obj)


_SCALAR, _REPEATED, _MAP, _MESSAGE, _REPEATED_MESSAGE = range(5)
_PLANS: dict[tuple[type[Any], type[Message]], list[tuple[str, int]]] = {}


def _plan(obj_type: type[Any], msg_cls: type[Message]) -> list[tuple[str, int]]:
    """(field name, kind) for every message field the object type may carry, from the descriptor once."""
    key = (obj_type, msg_cls)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    names = {f.name for f in dataclasses.fields(obj_type)} if dataclasses.is_dataclass(obj_type) else None
    plan = []
    for fd in msg_cls.DESCRIPTOR.fields:
        if names is not None and fd.name not in names:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            kind = _MAP
        elif fd.message_type is not None:
            kind = _REPEATED_MESSAGE if _is_repeated(fd) else _MESSAGE
        else:
            kind = _REPEATED if _is_repeated(fd) else _SCALAR
        plan.append((fd.name, kind))
    if len(_PLANS) < 256:  # dataclass/message pairs: a handful in practice
        _PLANS[key] = plan
    return plan


def _fill(msg: Message, obj: Any) -> None:
    for name, kind in _plan(type(obj), type(msg)):
        value = getattr(obj, name, None)
        if value is None:
            continue
        if kind == _SCALAR:
            if value:
                try:
                    setattr(msg, name, value)
                except UnicodeEncodeError:  # host text that is not UTF-8 (a matched interface's name): escaped
                    setattr(msg, name, utf8_text(value))
        elif kind == _REPEATED_MESSAGE:
            if value:
                add = getattr(msg, name).add
                for item in value:
                    _fill(add(), item)
        elif kind == _REPEATED:
            if value:
                try:
                    getattr(msg, name).extend(value)
                except UnicodeEncodeError:
                    del getattr(msg, name)[:]
                    getattr(msg, name).extend(utf8_text(v) if isinstance(v, str) else v for v in value)
        elif kind == _MAP:
            if value:
                try:
                    getattr(msg, name).update(value)
                except UnicodeEncodeError:
                    getattr(msg, name).clear()
                    getattr(msg, name).update({utf8_text(k) if isinstance(k, str) else k:
                                               utf8_text(v) if isinstance(v, str) else v for k, v in value.items()})
        else:
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill(sub, value)


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def from_message(msg: Message, cls: type[Any], **extra: Any) -> Any:
    """Build a dataclass `cls` from a message, recursing into dataclass-typed fields by their annotations.

    Fields the message lacks come from `extra` (or the dataclass defaults)."""
    import typing

    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = dict(extra)
    for f in dataclasses.fields(cls):
        if f.name in extra or not hasattr(msg, f.name):
            continue
        value = getattr(msg, f.name)
        hint = hints.get(f.name)
        fd = msg.DESCRIPTOR.fields_by_name.get(f.name)
        if fd is not None and fd.enum_type is not None and not _is_repeated(fd):
            kwargs[f.name] = fd.enum_type.values_by_number.get(value, fd.enum_type.values[0]).name
            continue
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is list and args and dataclasses.is_dataclass(args[0]):
            kwargs[f.name] = [from_message(v, args[0]) for v in value]  # type: ignore[arg-type]
        elif dataclasses.is_dataclass(hint):
            kwargs[f.name] = from_message(value, hint)  # type: ignore[arg-type]
        elif origin is dict:
            kwargs[f.name] = dict(value)
        elif origin is list:
            kwargs[f.name] = list(value)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)
