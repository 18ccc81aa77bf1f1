"""dlspec.structs: records that behave as the dataclasses they replace on the check path."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from dlspec.structs import Struct, replace


class Point(Struct):
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


class Labelled(Point):
    label: str = "p"


class Box(Struct, frozen=False):
    size: int
    items: list[int] = field(default_factory=list)


class Node(Struct, frozen=False, eq=False):
    name: str


class Explicit(Struct, frozen=False):
    value: int

    def __init__(self, text: str) -> None:  # a class's own __init__ is kept
        self.value = int(text)


@dataclass(frozen=True)
class Plain:
    a: int
    b: int = 2


def test_a_frozen_struct_is_a_frozen_slotted_dataclass() -> None:
    p = Point(1, tags=["a"])
    assert (p.x, p.y, p.tags) == (1, 0, ["a"])
    assert p == Point(1, 0, ["a"]) and p != Point(2) and p != (1, 0, ["a"])
    assert hash(Point(1, 2, ())) == hash(Point(1, 2, ()))
    assert repr(p) == "Point(x=1, y=0, tags=['a'])"
    assert Point(1).tags is not Point(1).tags  # a fresh default each
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del p.y  # type: ignore[misc]
    assert not hasattr(p, "__dict__")
    assert pickle.loads(pickle.dumps(p)) == p == copy.deepcopy(p)
    match p:
        case Point(x, y):
            assert (x, y) == (1, 0)


def test_a_subclass_adds_its_fields_after_its_bases() -> None:
    q = Labelled(1, 2, [], "q")
    assert (q.x, q.y, q.label) == (1, 2, "q") and q != Point(1, 2)
    assert repr(Labelled(3)) == "Labelled(x=3, y=0, tags=[], label='p')"


def test_a_mutable_struct_is_a_dataclass() -> None:
    b = Box(1)
    b.size = 2
    b.extra = "kept"  # type: ignore[attr-defined]  # it has a __dict__
    assert b == Box(2) and Box(1).items is not Box(1).items
    with pytest.raises(TypeError):
        hash(b)
    assert pickle.loads(pickle.dumps(b)).extra == "kept"


def test_eq_false_keeps_identity() -> None:
    a, b = Node("a"), Node("a")
    assert a != b and a == a and len({a, b}) == 2


def test_a_class_keeps_its_own_init() -> None:
    assert Explicit("12").value == 12


def test_replace_copies_a_struct_or_a_dataclass() -> None:
    p = Point(1, 2, ["t"])
    moved = replace(p, y=5)
    assert moved == Point(1, 5, ["t"]) and moved.tags is p.tags and p.y == 2
    assert replace(Box(1), size=3) == Box(3)
    assert replace(Plain(1), b=7) == Plain(1, 7)
    with pytest.raises(TypeError, match="Point has no field 'z'"):
        replace(p, z=1)
