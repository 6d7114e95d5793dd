"""Equality and repr for the rule engine's dataclasses, written once instead of generated per class.

`@dataclass` writes each class's __init__, __repr__ and __eq__ as source text and compiles it with exec()
when the class is made (Python 3.11: one compile per method). The ~20 engine classes `nodecompat validate`
imports paid ~25 ms of its start for that on this shared 2-CPU machine, ~40% of it for __repr__ and __eq__
(issue 11: validate <= 4x a bare interpreter). A class declared `@dataclass(repr=False, eq=False)` that
derives from `Plain` gets the same two methods from here, compiled once with this module (.pyc):

- __eq__: the fields with compare=True, as a tuple, when the other object is of the very same class;
  NotImplemented otherwise (what @dataclass generates);
- __repr__: `QualName(field=value!r, ...)` over the fields with repr=True, `...` for a reference back to
  an object being printed (@dataclass's recursion guard);
- no __hash__, as an eq=True, non-frozen dataclass (unhashable).

__init__ is still generated (its speed matters per instance). The standard library has no such switch;
tests/test_engine_plain.py compares both methods with @dataclass's.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, ClassVar

_Getter = Callable[[Any], tuple[Any, ...]]


def _fields_getter(names: list[str]) -> _Getter:
    """A function giving the named attributes of an object as a tuple (also for 0 or 1 name)."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = names[0]
        return lambda obj: (getattr(obj, one),)
    return lambda _obj: ()


class Plain:
    """Base of an engine dataclass declared with repr=False, eq=False (see the module docstring)."""

    __slots__ = ()
    __hash__: ClassVar[None] = None  # type: ignore[assignment]
    _plain_compare: ClassVar[dict[type, _Getter]] = {}
    _plain_repr: ClassVar[dict[type, list[str]]] = {}

    def __eq__(self, other: object) -> bool:
        cls = self.__class__
        if other.__class__ is not cls:
            return NotImplemented
        get = Plain._plain_compare.get(cls)
        if get is None:
            get = Plain._plain_compare[cls] = _fields_getter(
                [f.name for f in dataclasses.fields(self) if f.compare])  # type: ignore[arg-type]
        return bool(get(self) == get(other))

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        cls = self.__class__
        names = Plain._plain_repr.get(cls)
        if names is None:
            names = Plain._plain_repr[cls] = [f.name for f in dataclasses.fields(self) if f.repr]  # type: ignore[arg-type]
        return f"{cls.__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"
