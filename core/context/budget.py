"""Prompt budget arithmetic: pure, keyword-only, in tokens.

The prompt gets the model's context window minus what is reserved for the answer. The
minimum prompt (system prompt with the hot state, the current message, the tool specs) must
fit whole, or the turn fails with `ContextTooLarge`; what is left goes to history, kept newest
first and contiguous (an older message is never kept once a newer one was dropped, so the
conversation has no holes).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate

# After the provider says context_length_exceeded (our count was off), retry once with this
# share of the history budget, and at most this share of the history the failed call carried
# (halving an unused budget would send the very same prompt again).
HISTORY_SHRINK_FACTOR = 0.5


class ContextTooLarge(Exception):
    """The minimum prompt does not fit the budget; carries the numbers and a user message."""

    kind = "context_too_large"

    def __init__(self, *, minimum_tokens: int, budget_tokens: int, system_tokens: int, current_tokens: int,
                 tools_tokens: int) -> None:
        self.minimum_tokens, self.budget_tokens = minimum_tokens, budget_tokens
        self.system_tokens, self.current_tokens, self.tools_tokens = system_tokens, current_tokens, tools_tokens
        self.user_message = (
            f"Your message is too long for the model: the prompt needs about {minimum_tokens} tokens and at"
            f" most {budget_tokens} fit. Send long text as a file (I read files in parts), or shorten it.")
        super().__init__(
            f"context too large: minimum prompt {minimum_tokens} tokens (system {system_tokens}, current"
            f" {current_tokens}, tools {tools_tokens}) > budget {budget_tokens}")


@dataclass(frozen=True)
class BudgetPlan:
    """How the prompt budget is spent; names match `core.contracts.ContextPlan`."""

    history_kept: int
    history_dropped: int
    history_tokens: int
    history_budget_tokens: int
    minimum_tokens: int
    total_tokens: int
    budget_tokens: int


def plan_context(*, system_tokens: int, current_tokens: int, tools_tokens: int,
                 history_tokens_newest_first: list[int], context_tokens: int, reserve_output_tokens: int,
                 history_share: float = 1.0, max_history_tokens: int | None = None) -> BudgetPlan:
    """Keep the newest history messages that fit `history_share` of what the minimum prompt
    leaves (and at most `max_history_tokens`, when given); ValueError on negative or
    nonsensical inputs (fail closed)."""
    named = {"system_tokens": system_tokens, "current_tokens": current_tokens, "tools_tokens": tools_tokens,
             "context_tokens": context_tokens, "reserve_output_tokens": reserve_output_tokens}
    for name, value in named.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not _non_negative_ints(history_tokens_newest_first):
        raise ValueError("history token counts must be non-negative integers")
    if not (isinstance(history_share, int | float) and math.isfinite(history_share) and 0 <= history_share <= 1):
        raise ValueError(f"history_share must be within 0..1, got {history_share!r}")
    if max_history_tokens is not None and (isinstance(max_history_tokens, bool) or not isinstance(
            max_history_tokens, int) or max_history_tokens < 0):
        raise ValueError(f"max_history_tokens must be a non-negative integer, got {max_history_tokens!r}")
    budget_tokens = context_tokens - reserve_output_tokens
    if budget_tokens <= 0:
        raise ValueError(f"reserve_output_tokens ({reserve_output_tokens}) leaves no room in a context of"
                         f" {context_tokens} tokens")
    minimum_tokens = system_tokens + current_tokens + tools_tokens
    if minimum_tokens > budget_tokens:
        raise ContextTooLarge(minimum_tokens=minimum_tokens, budget_tokens=budget_tokens,
                              system_tokens=system_tokens, current_tokens=current_tokens, tools_tokens=tools_tokens)
    history_budget_tokens = math.floor(history_share * (budget_tokens - minimum_tokens))
    if max_history_tokens is not None:
        history_budget_tokens = min(history_budget_tokens, max_history_tokens)
    kept, used = newest_that_fit(history_tokens_newest_first, history_budget_tokens)
    return BudgetPlan(history_kept=kept, history_dropped=len(history_tokens_newest_first) - kept,
                      history_tokens=used, history_budget_tokens=history_budget_tokens,
                      minimum_tokens=minimum_tokens, total_tokens=minimum_tokens + used, budget_tokens=budget_tokens)


def newest_that_fit(tokens_newest_first: Iterable[int], budget_tokens: int) -> tuple[int, int]:
    """How many of the newest messages fit `budget_tokens` together, and their tokens: the
    longest prefix of `tokens_newest_first` whose sum fits. Counts are non-negative, so the
    running totals only grow and the cut is a binary search (the loop runs in C)."""
    totals = list(accumulate(tokens_newest_first))
    kept = bisect_right(totals, budget_tokens)
    return kept, totals[kept - 1] if kept else 0


def _non_negative_ints(values: list[int]) -> bool:
    """Every value an int (not a bool) and not negative: at C speed when all are plain ints."""
    if set(map(type, values)) <= {int}:
        return min(values, default=0) >= 0
    return not any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in values)
