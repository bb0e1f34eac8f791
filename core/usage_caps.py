"""Spend caps, decided before the LLM call: pure, keyword-only arithmetic on the running totals.

The monthly cap (USD, the whole bot) is checked first and fails closed on an unknown price; the
per-user daily cap counts tokens. The caller warns once per period at 80% (core/usage.py keeps
which warnings were given, core/usage_text.py words them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CapName = Literal["user_daily_tokens", "monthly_usd"]
WARN_FRACTION = 0.8
# Sums of float dollars are not exact (0.1 + 0.2 > 0.3); a nano-dollar of slack keeps
# "exactly at the cap" allowed without letting any real overspend through.
_USD_SLACK = 1e-9


@dataclass(frozen=True)
class CapDecision:
    """The pre-call verdict, as numbers (core/usage_text.py words it). On a refusal, `limit` is
    the refusing cap and `left` what remained of it before this turn (tokens or USD)."""

    allowed: bool
    cap: CapName | None = None  # the cap that refused, when not allowed
    limit: float = 0.0
    left: float = 0.0
    price_unknown: bool = False  # refused because the monthly cap cannot be checked
    warn: tuple[CapName, ...] = ()  # caps this turn takes to >= 80%; the caller warns once per period
    user_tokens_after: int = 0  # the user's tokens today if this turn spends its estimate
    month_cost_after_usd: float = 0.0  # the bot's month spend likewise


def check_caps(*, is_operator: bool, estimated_tokens: int, estimated_cost_usd: float | None,
               user_tokens_today: int, user_daily_token_cap: int, month_cost_usd: float,
               monthly_cap_usd: float) -> CapDecision:
    """Decide, before the LLM call, whether this turn fits the caps (0 = unlimited). The monthly
    cap is checked first (a daily reset would not help) and fails closed on an unknown price;
    the operator is exempt from the per-user daily cap only."""
    if min(estimated_tokens, user_tokens_today, user_daily_token_cap, month_cost_usd, monthly_cap_usd,
           estimated_cost_usd or 0.0) < 0:
        raise ValueError("check_caps: token counts, costs and caps must be non-negative")
    warn: list[CapName] = []
    month_after_usd = month_cost_usd + (estimated_cost_usd or 0.0)
    day_after_tokens = user_tokens_today + estimated_tokens
    if monthly_cap_usd > 0:
        if estimated_cost_usd is None:
            return CapDecision(False, "monthly_usd", limit=monthly_cap_usd,
                               left=max(monthly_cap_usd - month_cost_usd, 0.0), price_unknown=True)
        if month_after_usd > monthly_cap_usd + _USD_SLACK:
            left_usd = monthly_cap_usd - month_cost_usd
            return CapDecision(False, "monthly_usd", limit=monthly_cap_usd,
                               left=left_usd if left_usd > _USD_SLACK else 0.0)
        if month_after_usd >= monthly_cap_usd * WARN_FRACTION - _USD_SLACK:
            warn.append("monthly_usd")
    if user_daily_token_cap > 0 and not is_operator:
        if day_after_tokens > user_daily_token_cap:
            return CapDecision(False, "user_daily_tokens", limit=user_daily_token_cap,
                               left=max(user_daily_token_cap - user_tokens_today, 0))
        if day_after_tokens * 10 >= user_daily_token_cap * 8:  # integer form of >= 80%
            warn.append("user_daily_tokens")
    return CapDecision(True, warn=tuple(warn), user_tokens_after=day_after_tokens,
                       month_cost_after_usd=month_after_usd)


def daily_warning_key(user_id: int, day: str) -> str:
    return f"daily:{user_id}:{day}"


def monthly_warning_key(month: str) -> str:
    return f"monthly:{month}"
