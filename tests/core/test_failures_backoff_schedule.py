"""The one backoff schedule: pure arithmetic, checked without sleeping."""

from __future__ import annotations

from itertools import islice

import backoff
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.failures.backoff_schedule import ceiling_wait_s, jittered_wait_s


def test_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    waits = [ceiling_wait_s(attempt=n, base_wait_s=0.5, max_wait_s=8.0) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_ceiling_is_backoffs_expo_sequence() -> None:
    expo = backoff.expo(base=2, factor=2.0, max_value=60.0)
    next(expo)  # backoff primes its generators with a bare yield
    assert [ceiling_wait_s(attempt=n, base_wait_s=2.0, max_wait_s=60.0) for n in range(1, 11)] == list(
        islice(expo, 10))


def test_attempts_below_one_wait_like_the_first_and_huge_ones_stay_capped() -> None:
    first = ceiling_wait_s(attempt=1, base_wait_s=3.0, max_wait_s=100.0)
    assert ceiling_wait_s(attempt=0, base_wait_s=3.0, max_wait_s=100.0) == first == 3.0
    assert ceiling_wait_s(attempt=-5, base_wait_s=3.0, max_wait_s=100.0) == first
    assert ceiling_wait_s(attempt=10_000, base_wait_s=3.0, max_wait_s=100.0) == 100.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 0.0), (0.25, 1.0), (1.0, 4.0), (-1.0, 0.0), (7.0, 4.0)])
def test_full_jitter_scales_the_ceiling_by_the_draw_clamped_to_0_1(rand: float, expected: float) -> None:
    assert jittered_wait_s(attempt=3, base_wait_s=1.0, max_wait_s=10.0, rand=rand) == expected


@given(st.integers(min_value=-3, max_value=200), st.floats(min_value=0.0, max_value=1.0),
       st.floats(min_value=0.0, max_value=30.0), st.floats(min_value=0.0, max_value=600.0))
def test_waits_are_bounded(attempt: int, rand: float, base_wait_s: float, max_wait_s: float) -> None:
    ceiling = ceiling_wait_s(attempt=attempt, base_wait_s=base_wait_s, max_wait_s=max_wait_s)
    assert 0.0 <= ceiling <= max_wait_s
    assert 0.0 <= jittered_wait_s(attempt=attempt, base_wait_s=base_wait_s, max_wait_s=max_wait_s,
                                  rand=rand) <= ceiling
