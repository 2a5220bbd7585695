"""Durations (flowd/_redis/timeutil.py): float seconds or timedelta in, milliseconds for Redis."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowd
from flowd._redis.timeutil import to_ms, to_seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1.0),
        (2.5, 2.5),
        (0.001, 0.001),
        (timedelta(seconds=30), 30.0),
        (timedelta(milliseconds=1500), 1.5),
        (timedelta(minutes=2), 120.0),
        (timedelta(microseconds=1), 1e-6),
    ],
)
def test_seconds_and_timedeltas_are_accepted(value: Any, seconds: float) -> None:
    result = to_seconds(value, "min_idle_time")
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "value", [-1, -0.5, -1e-9, timedelta(seconds=-1), timedelta(microseconds=-1)]
)
def test_negative_is_rejected(value: Any) -> None:
    for allow_zero in (False, True):
        with pytest.raises(flowd.ConfigurationError, match="min_idle_time") as info:
            to_seconds(value, "min_idle_time", allow_zero=allow_zero)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_is_rejected(value: float) -> None:
    with pytest.raises(flowd.ConfigurationError, match=r"interval.*finite"):
        to_seconds(value, "interval", allow_zero=True)


@pytest.mark.parametrize("value", [True, False, "1", "1.5", None, b"1", Decimal("1"), [1]])
def test_non_numbers_are_rejected(value: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="interval") as info:
        to_seconds(value, "interval", allow_zero=True)
    assert type(value).__name__ in str(info.value)


@pytest.mark.parametrize("zero", [0, 0.0, -0.0, timedelta(0)])
def test_zero_only_with_allow_zero(zero: Any) -> None:
    with pytest.raises(flowd.ConfigurationError, match="> 0"):
        to_seconds(zero, "timeout")
    assert to_seconds(zero, "timeout", allow_zero=True) == 0.0


def test_to_ms() -> None:
    assert to_ms(1.5) == 1500
    assert to_ms(30.0) == 30_000
    assert to_ms(0.0) == 0
    assert type(to_ms(2.0)) is int


@pytest.mark.parametrize("tiny", [0.0009, 0.0001, 1e-9, 5e-324])
def test_to_ms_never_rounds_a_positive_time_to_zero(tiny: float) -> None:
    assert to_ms(tiny) == 1


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e9, exclude_min=True))
def test_to_ms_is_positive_and_within_a_millisecond(seconds: float) -> None:
    ms = to_ms(seconds)
    assert isinstance(ms, int)
    assert ms >= 1
    assert abs(ms - seconds * 1000) <= 1


def test_to_ms_of_a_validated_microsecond() -> None:
    assert to_ms(to_seconds(timedelta(microseconds=1), "block")) == 1


def test_int_too_big_for_a_float_is_a_configuration_error() -> None:
    with pytest.raises(flowd.ConfigurationError):
        to_seconds(10**400, "interval")
