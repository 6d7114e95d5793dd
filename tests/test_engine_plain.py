"""nodecompat.engine.plain.Plain gives the engine's dataclasses (declared repr=False, eq=False) the __eq__ and
__repr__ that @dataclass generates: same text, same answers (NotImplemented for another class, fields left out
with compare=False / repr=False, a recursive reference as `...`), unhashable, and slots kept."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodecompat.engine.plain import Plain
from nodecompat.engine.verdict import ExpressionVerdict, RuleVerdict, SetVerdict, TermVerdict, Verdict


def _pair(*, slots: bool = False) -> tuple[type[Any], type[Any]]:
    """Two classes named Node with the same fields: @dataclass's methods, and Plain's."""

    def generated() -> type[Any]:
        @dataclass(slots=slots)
        class Node:
            name: str = ""
            values: list[Any] = field(default_factory=list)
            hidden: int = field(default=0, repr=False)
            ignored: float = field(default=0.0, compare=False)
            child: Any = None

        return Node

    def plain() -> type[Any]:
        @dataclass(slots=slots, repr=False, eq=False)
        class Node(Plain):
            name: str = ""
            values: list[Any] = field(default_factory=list)
            hidden: int = field(default=0, repr=False)
            ignored: float = field(default=0.0, compare=False)
            child: Any = None

        return Node

    pair = generated(), plain()
    for cls in pair:
        cls.__qualname__ = "Node"  # both print as Node(...)
    return pair


@pytest.mark.parametrize("slots", [False, True])
def test_eq_and_repr_are_dataclass_s(slots: bool) -> None:
    gen, ours = _pair(slots=slots)
    nan = float("nan")
    cases: list[dict[str, Any]] = [
        {}, {"name": "a"}, {"name": "a", "values": [1, "x"]}, {"hidden": 3}, {"ignored": 2.5},
        {"values": [nan]}, {"name": "ü\n'\"", "child": ("t", 1)},
    ]
    for a in cases:
        for b in cases:
            assert (gen(**a) == gen(**b)) == (ours(**a) == ours(**b)), (a, b)
            assert (gen(**a) != gen(**b)) == (ours(**a) != ours(**b)), (a, b)
        assert repr(gen(**a)) == repr(ours(**a)), a
    shared = [nan]  # the same NaN object: equal as a tuple element, as in @dataclass's tuple comparison
    assert ours(values=shared) == ours(values=shared) and gen(values=shared) == gen(values=shared)
    assert ours(ignored=1.0) == ours(ignored=2.0)  # compare=False
    assert ours().__eq__(gen()) is NotImplemented and ours() != gen() and ours() != object()
    with pytest.raises(TypeError, match="unhashable"):
        hash(ours())
    if slots:
        assert not hasattr(ours(), "__dict__")
        with pytest.raises(AttributeError):
            ours().other = 1


def test_a_recursive_reference_prints_as_dataclass_s() -> None:
    gen, ours = _pair()
    g, o = gen(name="loop"), ours(name="loop")
    g.child, o.child = g, o
    assert repr(g) == repr(o) == "Node(name='loop', values=[], ignored=0.0, child=...)"


def test_verdicts_compare_and_print_by_their_fields() -> None:
    def verdict(detail: str) -> Verdict:
        ev = ExpressionVerdict(feature="cpu.cpuid", element="AVX2", op="Exists", matched=True, detail=detail)
        tv = TermVerdict(feature="cpu.cpuid", matched=True, feature_present=True, expressions=[ev])
        return Verdict(compatible=True, score=10, sets=[SetVerdict(rules=[RuleVerdict(name="r", match_features=[tv])])])

    assert verdict("x") == verdict("x") and verdict("x") != verdict("y")
    assert Verdict.from_dict(verdict("x").to_dict()) == verdict("x")
    assert repr(verdict("x")).startswith("Verdict(compatible=True, score=10, sets=[SetVerdict(index=0, ")
    assert "ExpressionVerdict(feature='cpu.cpuid', element='AVX2', matcher_type='matchExpression'" in repr(verdict("x"))
    assert [f.name for f in dataclasses.fields(Verdict)][:3] == ["compatible", "score", "sets"]
