"""Container fields are checked at enqueue by their contents, with the decoder's own rules.

Trust case 9: a list[int] given strings, a dict[str, int] given text values, a
set[int] of strings, a tuple of the wrong length and a nested dataclass with a
wrong field type all used to enqueue and then dead-letter as undecodable.
EncodeError at enqueue is the promise (errors.py): what enqueues always decodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowd
from flowd._codec.plan import decode_job, encode_job


@dataclass
class Line:
    sku: str
    quantity: int


@dataclass
class Order(flowd.Job):
    numbers: list[int] = dataclasses.field(default_factory=list)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    tags: set[int] = dataclasses.field(default_factory=set)
    point: tuple[int, int] = (0, 0)
    line: Line = dataclasses.field(default_factory=lambda: Line("a", 1))
    lines: list[Line] = dataclasses.field(default_factory=list)
    by_id: dict[int, str] = dataclasses.field(default_factory=dict)
    nested: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    prices: list[Decimal] = dataclasses.field(default_factory=list)
    tree: Node | None = None


@dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)


BAD_CONTENTS: list[tuple[str, dict[str, Any], str]] = [
    ("list of str for list[int]", {"numbers": ["1"]}, "numbers[0]: expected an integer"),
    ("dict value", {"counts": {"a": "x"}}, "counts['a']: expected an integer"),
    ("set of str for set[int]", {"tags": {"a"}}, "tags[0]: expected an integer"),
    ("tuple of three for tuple[int, int]", {"point": (1, 2, 3)}, "expected 2 items, got 3"),
    ("nested dataclass field", {"line": Line("a", "x")}, "line.quantity: expected an integer"),  # type: ignore[arg-type]
    ("dataclass in a list", {"lines": [Line(1, 1)]}, "lines[0].sku: expected a string"),  # type: ignore[arg-type]
    ("dict key that is no int", {"by_id": {"x": "a"}}, "by_id"),
    ("Decimal list given text", {"prices": ["x"]}, "Order.prices"),
    ("recursive dataclass", {"tree": Node(1, [Node("x")])}, "tree.children[0].value"),  # type: ignore[arg-type]
    ("list in a dict", {"nested": {"k": [1, None]}}, "nested['k'][1]: expected a value"),
]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [pytest.param(f, r, id=name) for name, f, r in BAD_CONTENTS],
)
def test_bad_contents_raise_at_enqueue_and_write_nothing(
    producer: flowd.Producer, client: redis.Redis, stream: str, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(flowd.EncodeError) as raised:
        producer.enqueue(Order(**fields))
    assert reason in str(raised.value)
    assert "Order." in str(raised.value)  # names the class and field
    assert client.xlen(stream) == 0


def test_bad_contents_in_a_bulk_write_nothing(
    producer: flowd.Producer, client: redis.Redis, stream: str
) -> None:
    # Encoding comes before any write, so the good jobs before the bad one are not sent.
    jobs = [Order(numbers=[i]) for i in range(10)] + [Order(numbers=["x"])]  # type: ignore[list-item]
    with pytest.raises(flowd.EncodeError):
        producer.enqueue_bulk(jobs)
    assert client.xlen(stream) == 0


def test_good_contents_round_trip(
    producer: flowd.Producer, client: redis.Redis, stream: str
) -> None:
    job = Order(
        numbers=[1, 2],
        counts={"a": 1},
        tags={3},
        point=(4, 5),
        line=Line("b", 2),
        lines=[Line("c", 3)],
        by_id={7: "seven"},
        nested={"k": [1, 2]},
        prices=[Decimal("1.50")],
        tree=Node(1, [Node(2, [Node(3)])]),
    )
    producer.enqueue(job)
    ((_, fields),) = client.xrange(stream)
    assert decode_job(Order, fields) == job


# ---------------------------------------------------------------------------
# Property: whatever a container is given, either enqueue refuses it or it decodes.

scalars = st.one_of(
    st.integers(),
    st.text(max_size=5),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
)
lists = st.lists(scalars, max_size=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    numbers=lists,
    counts=st.dictionaries(st.text(max_size=3), scalars, max_size=3),
    tags=st.lists(st.integers() | st.text(max_size=3), max_size=3),
    point=st.lists(scalars, max_size=3),
    line=st.tuples(scalars, scalars),
    nested=st.dictionaries(st.text(max_size=3), lists, max_size=2),
)
def test_what_encodes_decodes(
    numbers: list[Any],
    counts: dict[str, Any],
    tags: list[Any],
    point: list[Any],
    line: tuple[Any, Any],
    nested: dict[str, list[Any]],
) -> None:
    job = Order(
        numbers=numbers,
        counts=counts,
        tags=set(tags),
        point=tuple(point),  # type: ignore[arg-type]
        line=Line(*line),
        nested=nested,
    )
    try:
        fields = encode_job(job)
    except flowd.EncodeError:
        return
    assert decode_job(Order, fields) == job
