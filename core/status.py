"""The texts behind /status, /budget and /usage: read from storage and telemetry, never recounted.

Concise by design: /status must fit one phone screen.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from core.charts import spend_chart_png
from core.store import read_counter
from core.telemetry import ALL_MODELS, ModelScore, scoreboard
from core.usage import days_back, utc_day, utc_month
from core.usage_text import format_by_model, format_operator_budget, format_usage_table, format_user_budget

if TYPE_CHECKING:
    from core.services import Services

DAY_NS = 24 * 3600 * 10**9
CHART_DAYS = 30


def _uptime(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m"


async def status_text(services: Services, *, chat_id: int, operator: bool) -> str:
    from core.services import VERSION

    settings, models = services.settings, services.models
    model = models.resolve(await services.chat_models.get(chat_id))
    now_ns = time.time_ns()
    scores = await asyncio.to_thread(scoreboard, services.telemetry.spans, since_ns=now_ns - DAY_NS, now_ns=now_ns)
    hot_tokens = await services.hot_state.tokens(chat_id)
    last = await services.chats.last_prompt(chat_id)
    lines = [
        f"Gateway {VERSION}, up {_uptime(services.clock.monotonic() - services.started_monotonic)}, {services.mode}",
        f"Model: {model} @ {models.endpoint(model).host}",
        f"Circuit: {_circuit(services, model)}",
    ]
    llm = next((s for s in scores if s.model == model), None)
    if llm is None and len(models.all_models()) == 1:
        llm = next((s for s in scores if s.model != ALL_MODELS), None)
    lines.append(f"LLM 24h: {_calls(llm)}")
    for other in models.all_models():
        if other != model:
            score = next((s for s in scores if s.model == other), None)
            role = "fallback" if other in models.fallbacks else "choice"
            lines.append(f"{other} ({role}): circuit {_circuit(services, other)}; {_calls(score)}")
    if operator:
        lines += turn_score_lines(scores, dropped_spans=services.telemetry.dropped_spans)
    lines.append(f"Hot state: {hot_tokens} / {settings.hot_state_max_tokens} tokens")
    if last is not None:
        tokens, budget = last
        lines.append(f"Last prompt: {tokens:,} of {budget:,} tokens ({tokens / budget:.0%})" if budget else
                     f"Last prompt: {tokens:,} tokens")
    lines.append(f"Tokens: {services.counter.describe()}")
    lines.append(f"DLQ: {await services.dlq.depth()} pending, outbox: {await services.outbox.depth()} pending")
    spoken, unspoken = await read_counter(services.db, "speech_sent"), await read_counter(services.db, "speech_failed")
    if spoken or unspoken:  # /voice on: voice notes sent, and speech calls that failed (the text went out)
        lines.append(f"Spoken answers: {spoken} sent, {unspoken} failed")
    error = services.last_error
    lines.append(f"Last error: {error['kind']} (ref: {error['ref']})" if error else "Last error: none")
    return "\n".join(lines)


def _circuit(services: Services, model: str) -> str:
    breaker = services.breakers.get(services.models.endpoint(model).base_url, model)
    snap = breaker.snapshot(now_s=services.clock.monotonic())
    return snap.state + (f" (retry in {snap.retry_in_s:.0f} s)" if snap.state == "open" and snap.retry_in_s else "")


def _calls(score: ModelScore | None) -> str:
    if score is None or not score.llm_calls:
        return "no calls yet"
    return (f"{score.llm_calls} calls, p50 {score.llm_p50_ms:.0f} ms, p95 {score.llm_p95_ms:.0f} ms, "
            f"failures {score.llm_failure_rate:.0%}")


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


async def budget_text(services: Services, *, user_id: int, operator: bool) -> str:
    """/budget: the bot's month against the cap for the operator, the user's own day and month otherwise."""
    settings, ledger = services.settings, services.ledger
    now = services.clock.now()
    day, month = utc_day(now), utc_month(now)
    if operator:
        text = format_operator_budget(
            now=now, month=await ledger.month_totals(month), today=await ledger.day_totals(day), wasted=await ledger.wasted(month),
            top=await ledger.top_users(month, 5), monthly_cap_usd=settings.monthly_budget_usd,
            user_daily_token_cap=settings.user_daily_token_budget, unknown_models=await ledger.unknown_models(month))
        return "\n".join([text, *format_by_model(await ledger.by_model(month=month), title="By model this month:")])
    today = await ledger.user_day(user_id, day)
    text = format_user_budget(now=now, user_tokens_today=today.total_tokens,
                              user_daily_token_cap=settings.user_daily_token_budget, user_today=today,
                              user_month=await ledger.user_month(user_id, month),
                              is_operator=services.is_operator_user(user_id))
    by_model = await ledger.by_model(month=month, user_id=user_id)
    return "\n".join([text, *format_by_model(by_model, title="Your month by model:")])


async def usage_week_text(services: Services, *, user_id: int) -> str:
    """/usage: the user's last 7 days, one line per day, in a fixed-width block."""
    days = days_back(services.clock.now(), 7)
    table = format_usage_table(await services.ledger.user_days(user_id, days))
    by_model = format_by_model(await services.ledger.by_model(days=days, user_id=user_id), title="By model:")
    return "\n".join([f"Your last 7 days:\n```\n{table}\n```", *by_model])


async def spend_chart(services: Services) -> bytes | None:
    """The operator's chart of daily spend over 30 days (None without matplotlib). Drawn in a
    worker thread: the first drawing imports matplotlib, which would stall every chat for a second."""
    days = await services.ledger.daily_spend(days_back(services.clock.now(), CHART_DAYS))  # SQLite stays on the loop
    return await asyncio.to_thread(spend_chart_png, days, title=f"Daily spend, last {CHART_DAYS} days (USD)")
