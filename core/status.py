"""The texts behind /status, /budget and /usage: read from storage and telemetry, never recounted.

Concise by design: /status must fit one phone screen.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from core.charts import spend_chart_png
from core.telemetry import ALL_MODELS, ModelScore, scoreboard
from core.usage import days_back, utc_day, utc_month
from core.usage_text import format_operator_budget, format_usage_table, format_user_budget

if TYPE_CHECKING:
    from core.services import Services

DAY_NS = 24 * 3600 * 10**9
CHART_DAYS = 30


def _uptime(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


def status_text(services: Services, *, chat_id: int, operator: bool) -> str:
    from core.services import VERSION

    settings = services.settings
    breaker = services.breakers.get(settings.llm_base_url, settings.llm_model)
    snap = breaker.snapshot(now_s=services.clock.monotonic())
    circuit = snap.state + (f" (retry in {snap.retry_in_s:.0f} s)" if snap.state == "open" and snap.retry_in_s else "")
    now_ns = time.time_ns()
    scores = scoreboard(services.telemetry.db_path, since_ns=now_ns - DAY_NS, now_ns=now_ns)
    llm = next((s for s in scores if s.model == settings.llm_model), None)
    if llm is None:
        llm = next((s for s in scores if s.model != ALL_MODELS), None)
    hot_tokens = services.hot_state.tokens(chat_id)
    last = services.chats.last_prompt(chat_id)
    lines = [
        f"Gateway {VERSION}, up {_uptime(services.clock.monotonic() - services.started_monotonic)}, {services.mode}",
        f"Model: {settings.llm_model} @ {settings.llm_host}",
        f"Circuit: {circuit}",
    ]
    if llm is not None and llm.llm_calls:
        lines.append(f"LLM 24h: {llm.llm_calls} calls, p50 {llm.llm_p50_ms:.0f} ms, p95 {llm.llm_p95_ms:.0f} ms, "
                     f"failures {llm.llm_failure_rate:.0%}")
    else:
        lines.append("LLM 24h: no calls yet")
    if operator:
        lines += turn_score_lines(scores, dropped_spans=services.telemetry.dropped_spans)
    lines.append(f"Hot state: {hot_tokens} / {settings.hot_state_max_tokens} tokens")
    if last is not None:
        tokens, budget = last
        lines.append(f"Last prompt: {tokens:,} of {budget:,} tokens ({tokens / budget:.0%})" if budget else
                     f"Last prompt: {tokens:,} tokens")
    lines.append(f"Tokens: {services.counter.describe()}")
    lines.append(f"DLQ: {services.dlq.depth()} pending, outbox: {services.outbox.depth()} pending")
    error = services.last_error
    lines.append(f"Last error: {error['kind']} (ref: {error['ref']})" if error else "Last error: none")
    return "\n".join(lines)


def turn_score_lines(scores: list[ModelScore], *, max_models: int = 2, dropped_spans: int = 0) -> list[str]:
    """The operator's scoreboard: turns and turn latency over 24 h, one short line per model,
    and the spans telemetry.db could not take since start (locked, read-only, disk full)."""
    rows = [s for s in scores if s.model != ALL_MODELS and s.turns][:max_models]
    if not rows:  # no turn reached a model: show every turn (refusals, throttles) or nothing
        rows = [s for s in scores if s.model == ALL_MODELS and s.turns]
    lines = [f"Turns 24h{'' if s.model == ALL_MODELS else ' ' + s.model}: {s.turns} ({s.failed_turns} failed), "
             f"p50 {s.turn_p50_ms:.0f} / p95 {s.turn_p95_ms:.0f} / p99 {s.turn_p99_ms:.0f} ms" for s in rows]
    lines = lines or ["Turns 24h: none yet"]
    if dropped_spans:
        lines[-1] += f" ({dropped_spans} spans not stored: see the logs)"
    return lines


def budget_text(services: Services, *, user_id: int, operator: bool) -> str:
    """/budget: the bot's month against the cap for the operator, the user's own day and month otherwise."""
    settings, ledger = services.settings, services.ledger
    now = services.clock.now()
    day, month = utc_day(now), utc_month(now)
    if operator:
        return format_operator_budget(
            now=now, month=ledger.month_totals(month), today=ledger.day_totals(day), wasted=ledger.wasted(month),
            top=ledger.top_users(month, 5), monthly_cap_usd=settings.monthly_budget_usd,
            user_daily_token_cap=settings.user_daily_token_budget, unknown_models=ledger.unknown_models(month))
    today = ledger.user_day(user_id, day)
    return format_user_budget(now=now, user_tokens_today=today.total_tokens,
                              user_daily_token_cap=settings.user_daily_token_budget, user_today=today,
                              user_month=ledger.user_month(user_id, month),
                              is_operator=services.is_operator_user(user_id))


def usage_week_text(services: Services, *, user_id: int) -> str:
    """/usage: the user's last 7 days, one line per day, in a fixed-width block."""
    table = format_usage_table(services.ledger.user_days(user_id, days_back(services.clock.now(), 7)))
    return f"Your last 7 days:\n```\n{table}\n```"


async def spend_chart(services: Services) -> bytes | None:
    """The operator's chart of daily spend over 30 days (None without matplotlib). Drawn in a
    worker thread: the first drawing imports matplotlib, which would stall every chat for a second."""
    days = services.ledger.daily_spend(days_back(services.clock.now(), CHART_DAYS))  # SQLite stays on the loop
    return await asyncio.to_thread(spend_chart_png, days, title=f"Daily spend, last {CHART_DAYS} days (USD)")
