"""Prompt budget arithmetic: what fits, what is dropped, and when a turn cannot fit at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.context.budget import HISTORY_SHRINK_FACTOR, ContextTooLarge, plan_context


def plan(**overrides):
    args = dict(system_tokens=100, current_tokens=50, tools_tokens=30, history_tokens_newest_first=[],
                context_tokens=1000, reserve_output_tokens=200)
    return plan_context(**{**args, **overrides})


def test_everything_fits() -> None:
    result = plan(history_tokens_newest_first=[100, 200, 300])
    assert (result.history_kept, result.history_dropped, result.history_tokens) == (3, 0, 600)
    assert result.total_tokens == 780 and result.budget_tokens == 800 and result.minimum_tokens == 180


def test_oldest_are_dropped_and_no_holes() -> None:
    # Budget 800, minimum 180: 620 left. 300 + 300 fit; the 100-token message after a
    # dropped one is not kept (no holes in the conversation).
    result = plan(history_tokens_newest_first=[300, 300, 500, 100])
    assert (result.history_kept, result.history_dropped, result.history_tokens) == (2, 2, 600)
    shrunk = plan(history_tokens_newest_first=[300, 300, 500, 100], history_share=HISTORY_SHRINK_FACTOR)
    assert shrunk.history_budget_tokens == 310 and shrunk.history_kept == 1


def test_context_too_large() -> None:
    with pytest.raises(ContextTooLarge) as error:
        plan(current_tokens=1000)
    assert error.value.kind == "context_too_large"
    assert error.value.minimum_tokens == 1130 and error.value.budget_tokens == 800
    assert "1130" in error.value.user_message and "file" in error.value.user_message
    assert plan(current_tokens=670).history_budget_tokens == 0  # exactly full still fits


@pytest.mark.parametrize("overrides", [
    {"system_tokens": -1}, {"current_tokens": -5}, {"tools_tokens": True}, {"context_tokens": 1.5},
    {"history_tokens_newest_first": [1, -1]}, {"history_tokens_newest_first": [1, True]},
    {"history_tokens_newest_first": [2.0]}, {"history_share": 1.5}, {"history_share": float("nan")},
    {"reserve_output_tokens": 1000}, {"reserve_output_tokens": -1},
])
def test_bad_inputs_fail_closed(overrides: dict) -> None:
    with pytest.raises(ValueError):
        plan(**overrides)


@given(system=st.integers(0, 5000), current=st.integers(0, 5000), tools=st.integers(0, 500),
       history=st.lists(st.integers(0, 3000), max_size=30), context=st.integers(1000, 20000),
       reserve=st.integers(0, 999), share=st.floats(0, 1))
def test_plan_never_exceeds_budget(system: int, current: int, tools: int, history: list[int], context: int,
                                   reserve: int, share: float) -> None:
    try:
        result = plan_context(system_tokens=system, current_tokens=current, tools_tokens=tools,
                              history_tokens_newest_first=history, context_tokens=context,
                              reserve_output_tokens=reserve, history_share=share)
    except ContextTooLarge as error:
        assert error.minimum_tokens > context - reserve
        return
    assert result.total_tokens <= result.budget_tokens == context - reserve
    assert result.history_tokens == sum(history[: result.history_kept]) <= result.history_budget_tokens
    assert result.history_kept + result.history_dropped == len(history)
    if result.history_dropped:
        assert result.history_tokens + history[result.history_kept] > result.history_budget_tokens
