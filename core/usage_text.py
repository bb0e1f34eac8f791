"""What users and the operator read about usage: refusals, 80% warnings, /budget and /usage.

Plain text with short lines for a phone. The numbers come from core/usage.py (the ledger and
`check_caps`); nothing here computes a price or a cap, it only words them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from core.usage import DayTotals, ModelTotals, PeriodTotals, UserTotals, next_day_start, next_month_start
from core.usage_caps import CapDecision, CapName


def _attempts(count: int) -> str:
    return f"{count:,} attempt" + ("" if count == 1 else "s")


def format_usd(amount: float | None) -> str:
    """Dollars: 4 decimals under $1 ("$0.0123"), cents above ("$12.34"), "unknown" for None."""
    if amount is None:
        return "unknown"
    if amount == 0:
        return "$0.00"
    if abs(amount) < 0.0001:
        return "<$0.0001"
    return f"${amount:.4f}" if abs(amount) < 1 else f"${amount:,.2f}"


def format_cost(totals: PeriodTotals) -> str:
    """Known cost, "unknown" if nothing was priced, "$x + unknown" if only part was."""
    if not totals.unknown_cost_attempts:
        return format_usd(totals.cost_usd)
    if totals.unknown_cost_attempts == totals.attempts:
        return "unknown"
    return f"{format_usd(totals.cost_usd)} + unknown"


def format_duration(*, seconds: float) -> str:
    """A short countdown, rounded up to the minute: "3 h 12 min", "5 d 3 h", "1 min"."""
    minutes = max(math.ceil(seconds / 60), 1)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    return f"{mins} min"


def format_resets(cap: CapName, *, now: datetime) -> str:
    """When a cap's period ends: "It resets at 00:00 UTC (in 3 h 12 min)."."""
    if cap == "user_daily_tokens":
        at = next_day_start(now)
        return f"It resets at 00:00 UTC (in {format_duration(seconds=(at - now).total_seconds())})."
    at = next_month_start(now)
    return (f"It resets on {at.date().isoformat()} at 00:00 UTC"
            f" (in {format_duration(seconds=(at - now).total_seconds())}).")


def format_refusal(decision: CapDecision, *, now: datetime) -> str:
    """The user's reply when `check_caps` refused: which cap, what is left, when it resets."""
    if decision.allowed or decision.cap is None:
        return ""
    if decision.cap == "monthly_usd":
        cap = format_usd(decision.limit)
        if decision.price_unknown:
            return (f"The price of this model is unknown, so the monthly budget of {cap} cannot be enforced"
                    " and this request was refused. The operator can add the model to config/prices.json"
                    " or set MONTHLY_BUDGET_USD=0.")
        head = (f"This bot's monthly budget of {cap} is used up." if decision.left <= 0
                else f"This bot's monthly budget of {cap} would be exceeded by this request"
                     f" ({format_usd(decision.left)} left this month).")
        return f"{head} {format_resets('monthly_usd', now=now)}"
    cap_tokens, left_tokens = int(decision.limit), int(decision.left)
    head = (f"You have used your daily budget of {cap_tokens:,} tokens." if left_tokens <= 0
            else f"Your daily budget of {cap_tokens:,} tokens would be exceeded by this request"
                 f" ({left_tokens:,} left today).")
    return f"{head} {format_resets('user_daily_tokens', now=now)}"


def format_cap_warning(*, cap: CapName, now: datetime, used: float, limit: float) -> str:
    """The once-per-period heads-up when a cap passes 80% (`used`/`limit` in tokens or USD).
    `used` counts the turn being answered at its maximum, so it is an upper bound."""
    percent = math.floor(100 * used / limit) if limit > 0 else 0
    if cap == "user_daily_tokens":
        left = f"{max(int(limit - used), 0):,} tokens left"
        return (f"Heads-up: with this message you have used up to {percent}% of your daily budget of"
                f" {int(limit):,} tokens ({left}). {format_resets(cap, now=now)} /budget shows the details.")
    left = f"{format_usd(max(limit - used, 0.0))} left"
    return (f"This bot has used up to {percent}% of its monthly budget of {format_usd(limit)} ({left})."
            f" {format_resets(cap, now=now)}")


def format_user_budget(*, now: datetime, user_tokens_today: int, user_daily_token_cap: int,
                       user_today: PeriodTotals | None = None, user_month: PeriodTotals,
                       is_operator: bool = False) -> str:
    """A user's /budget: today's tokens (and cost) against their daily cap, and their month so far."""
    cost = f", {format_cost(user_today)}" if user_today is not None and user_today.attempts else ""
    if is_operator:
        lines = [f"Today: {user_tokens_today:,} tokens{cost} (the daily budget does not apply to the operator)."]
    elif user_daily_token_cap <= 0:
        lines = [f"Today: {user_tokens_today:,} tokens{cost} (no daily limit)."]
    else:
        left = max(user_daily_token_cap - user_tokens_today, 0)
        lines = [f"Today: {user_tokens_today:,} of {user_daily_token_cap:,} tokens used{cost} ({left:,} left).",
                 format_resets("user_daily_tokens", now=now)]
    lines.append(f"This month: {user_month.total_tokens:,} tokens, {format_cost(user_month)}.")
    return "\n".join(lines)


def format_operator_budget(*, now: datetime, month: PeriodTotals, today: PeriodTotals, wasted: PeriodTotals,
                           top: Sequence[UserTotals], monthly_cap_usd: float, user_daily_token_cap: int,
                           unknown_models: Sequence[str] = (), user_labels: Mapping[int, str] | None = None) -> str:
    """The operator's /budget: the month against the cap, today, waste, unpriced models, top users.
    `user_labels` maps user ids to display names (ids are shown otherwise)."""
    labels = user_labels or {}
    if monthly_cap_usd > 0:
        left_usd = max(monthly_cap_usd - month.cost_usd, 0.0)
        lines = [f"This month: {format_cost(month)} of {format_usd(monthly_cap_usd)}"
                 f" ({math.floor(100 * month.cost_usd / monthly_cap_usd)}%, {format_usd(left_usd)} left).",
                 format_resets("monthly_usd", now=now)]
    else:
        lines = [f"This month: {format_cost(month)} (no monthly limit)."]
    lines.append(f"Tokens: {month.total_tokens:,} in {_attempts(month.attempts)}"
                 + (f" ({month.estimated_attempts:,} estimated)." if month.estimated_attempts else "."))
    lines.append(f"Today: {today.total_tokens:,} tokens, {format_cost(today)}.")
    if wasted.attempts:
        lines.append(f"Wasted on failed attempts: {wasted.total_tokens:,} tokens, {format_cost(wasted)}"
                     f" ({_attempts(wasted.attempts)}).")
    else:
        lines.append("Wasted on failed attempts: none.")
    if month.unknown_cost_attempts:
        names = ", ".join(unknown_models) or "some models"
        lines.append(f"Unknown price ({_attempts(month.unknown_cost_attempts)}): {names}. Add to config/prices.json.")
    daily = f"{user_daily_token_cap:,} tokens" if user_daily_token_cap > 0 else "unlimited"
    lines.append(f"Per-user daily budget: {daily}.")
    if top:
        lines.append("Top users this month:")
        lines += [f"  {labels.get(u.user_id, str(u.user_id))}: {u.totals.total_tokens:,} tok, {format_cost(u.totals)}"
                  for u in top]
    return "\n".join(lines)


def format_usage_table(days: list[DayTotals]) -> str:
    """One line per day (date, tokens, cost) in fixed-width columns for a <pre> block, then a
    total. A cost marked "+?" also had attempts whose price is unknown."""
    def cost(totals: PeriodTotals) -> str:
        text = format_cost(totals)
        return text.replace(" + unknown", "+?") if text != "unknown" else "?"

    lines = [f"{'day':<10} {'tokens':>11} {'cost':>10}"]
    lines += [f"{d.day:<10} {d.totals.total_tokens:>11,} {cost(d.totals):>10}" for d in days]
    total = PeriodTotals(
        *(sum(getattr(d.totals, f) for d in days) for f in PeriodTotals.__dataclass_fields__))
    lines.append(f"{'total':<10} {total.total_tokens:>11,} {cost(total):>10}")
    if total.unknown_cost_attempts:
        lines.append("? = price unknown for some attempts")
    return "\n".join(lines)


def format_by_model(rows: Sequence[ModelTotals], *, title: str) -> list[str]:
    """Tokens and cost per model, one short line each (nothing when there was no usage)."""
    if not rows:
        return []
    return [title] + [f"  {r.model}: {r.totals.total_tokens:,} tok, {format_cost(r.totals)}" for r in rows]
