"""Context and budget stages: build a bounded prompt, then refuse it if it could cross a cap.

Token counts are computed once and stored (history rows, the hot state, the system prompt
and the tool definitions at start), so building a prompt costs the same at turn 10 and at
turn 10,000: only the current message is counted per turn. History that no longer fits is
archived as an artifact linked from the hot state, then leaves the active conversation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.context.budget import ContextTooLarge, plan_context
from core.context.hot_state import render
from core.context.tokens import REPLY_PRIMING_TOKENS
from core.context.tools import READ_ARTIFACT, UPDATE_HOT_STATE
from core.contracts import ChatMessage, ContextPlan, ContractViolation, ToolSpec, build
from core.failures.taxonomy import Kind
from core.outcomes import NoticeError
from core.usage import check_caps, cost_usd, utc_day, utc_month

if TYPE_CHECKING:
    from core.pipeline import Turn
    from core.services import Services

TOOLS: tuple[ToolSpec, ...] = (UPDATE_HOT_STATE, READ_ARTIFACT)


def static_token_costs(services: Services) -> tuple[int, int]:
    """Tokens of the base system prompt and of the tool definitions, counted once per process."""
    cached = getattr(services, "_static_tokens", None)
    if cached is None:
        system = services.counter.count_message(services.system_prompt) + REPLY_PRIMING_TOKENS
        tools = services.counter.count(json.dumps([t.to_openai() for t in TOOLS]))
        cached = (system, tools)
        services._static_tokens = cached  # type: ignore[attr-defined]
    return cached


async def context_stage(turn: Turn) -> None:
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    span = trace.get_current_span()
    state = services.hot_state.load(inbound.chat_id)
    hot_block = render(state)
    hot_tokens = services.hot_state.tokens(inbound.chat_id)
    base_system_tokens, tools_tokens = static_token_costs(services)
    system_tokens = base_system_tokens + hot_tokens + 2  # the blank line joining them
    current_tokens = services.counter.count_message(turn.user_text)
    turn.user_tokens = current_tokens  # type: ignore[attr-defined]
    prompt_budget = settings.llm_context_tokens - settings.llm_max_output_tokens
    candidates = services.history.recent(inbound.chat_id, max_tokens=max(0, prompt_budget))
    try:
        plan = plan_context(system_tokens=system_tokens, current_tokens=current_tokens, tools_tokens=tools_tokens,
                            history_tokens_newest_first=[m.tokens for m in reversed(candidates)],
                            context_tokens=settings.llm_context_tokens,
                            reserve_output_tokens=settings.llm_max_output_tokens,
                            history_share=turn.history_share)
    except ContextTooLarge as error:
        raise NoticeError(Kind.context_too_large, str(error)) from None
    kept = candidates[len(candidates) - plan.history_kept:] if plan.history_kept else []
    dropped = services.history.count_active(inbound.chat_id) - len(kept)
    if dropped > 0 and kept and turn.history_share == 1.0:
        archive_history(turn, before_id=kept[0].id)
    elif dropped > 0 and not kept and candidates and turn.history_share == 1.0:
        archive_history(turn, before_id=candidates[-1].id + 1)
    history_tokens = sum(m.tokens for m in kept)
    context_plan = build(
        ContextPlan, "context_plan_sane", "pipeline", system_tokens=system_tokens, hot_state_tokens=hot_tokens,
        hot_state_cap=settings.hot_state_max_tokens, history_tokens=history_tokens, history_kept=len(kept),
        history_dropped=max(0, dropped), current_tokens=current_tokens, tools_tokens=tools_tokens,
        artifact_count=len(state.artifacts) if hasattr(state, "artifacts") else 0,
        total_tokens=system_tokens + history_tokens + current_tokens + tools_tokens, budget_tokens=prompt_budget)
    turn.plan = context_plan
    system = ChatMessage(role="system", content=f"{services.system_prompt}\n\n{hot_block}")
    turn.messages = [system, *(ChatMessage(role=m.role, content=m.content) for m in kept),
                     ChatMessage(role="user", content=turn.user_text)]
    span.set_attributes({f"context.{k}": v for k, v in context_plan.model_dump().items() if k != "producer"})
    record_prompt_metrics(services, turn, context_plan)


def record_prompt_metrics(services: Services, turn: Turn, plan: ContextPlan) -> None:
    now = services.clock.iso()
    services.db.execute(
        "INSERT OR REPLACE INTO prompt_metrics(trace_id, chat_id, at, hot_state_tokens, history_tokens,"
        " history_kept, history_dropped, artifact_count, total_tokens, budget_tokens) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [turn.inbound.trace_id, turn.inbound.chat_id, now, plan.hot_state_tokens, plan.history_tokens,
         plan.history_kept, plan.history_dropped, plan.artifact_count, plan.total_tokens, plan.budget_tokens])
    services.chats.record_prompt(turn.inbound.chat_id, tokens=plan.total_tokens, budget=plan.budget_tokens,
                                 trace_id=turn.inbound.trace_id, now=now)


def archive_history(turn: Turn, *, before_id: int) -> None:
    """Older messages that no longer fit become one transcript artifact linked from the hot state."""
    from core.ingest import index_artifact

    services, chat_id = turn.services, turn.inbound.chat_id
    old = services.history.older_than(chat_id, before_id, limit=5000)
    if not old:
        return
    transcript = "\n\n".join(f"**{m.role}** (#{m.id}):\n{m.content}" for m in old)
    label = f"history #{old[0].id}-#{old[-1].id}"
    from core.context.artifacts import summarize

    info = services.artifacts.put(content=transcript.encode(), media_type="text/markdown", chat_id=chat_id,
                                  user_id=None, label=label, summary=summarize(transcript), kind="history_archive",
                                  trace_id=turn.inbound.trace_id, now=services.clock.iso())
    services.history.archive_through(chat_id, old[-1].id)
    index_artifact(turn, info, label=label, kind="history_archive")


async def budget_stage(turn: Turn) -> None:
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    now = services.clock.now()
    estimated_tokens = plan.total_tokens + settings.llm_max_output_tokens
    price = services.prices.price_for(settings.llm_model)
    estimated_cost = cost_usd(price=price, input_tokens=plan.total_tokens, output_tokens=settings.llm_max_output_tokens)
    is_operator = services.is_operator_user(inbound.user_id)
    used_today = services.ledger.user_day_tokens(inbound.user_id, utc_day(now))
    month_cost = services.ledger.month_totals(utc_month(now)).cost_usd
    decision = check_caps(now=now, is_operator=is_operator, estimated_tokens=estimated_tokens,
                          estimated_cost_usd=estimated_cost, user_tokens_today=used_today,
                          user_daily_token_cap=settings.user_daily_token_budget, month_cost_usd=month_cost,
                          monthly_cap_usd=settings.monthly_budget_usd)
    trace.get_current_span().set_attributes({
        "budget.estimated_tokens": estimated_tokens, "budget.user_tokens_today": used_today,
        "budget.month_cost_usd": month_cost, "budget.allowed": decision.allowed})
    if not decision.allowed:
        turn.outcome = "notice"
        raise NoticeError(Kind.budget_exhausted, decision.message, detail=f"cap {decision.cap}")
    for cap in decision.warn:
        await warn_once(turn, cap, now=now)


async def warn_once(turn: Turn, cap: str, *, now) -> None:  # noqa: ANN001 - datetime
    from core.contracts import Escalation

    services, inbound = turn.services, turn.inbound
    if cap == "user_daily_tokens":
        if services.warnings.once(f"daily:{inbound.user_id}:{utc_day(now)}", now=now.isoformat()):
            await turn.send("notice", "Heads-up: you have used 80% of your daily token budget. "
                                      "It resets at 00:00 UTC; /budget shows the details.")
    elif cap == "monthly_usd" and services.warnings.once(f"monthly:{utc_month(now)}", now=now.isoformat()):
        services.escalator.raise_alert(Escalation(
            producer="pipeline", key=f"monthly80:{utc_month(now)}", kind="budget_warning", severity="warning",
            summary="The bot has used 80% of MONTHLY_BUDGET_USD for this month.",
            action="raise MONTHLY_BUDGET_USD or expect refusals when it is reached", trace_id=inbound.trace_id),
            now=now)


def check_answer_contract(text: str) -> None:
    if not text.strip():
        raise ContractViolation("llm_answer_not_empty", field="choices[0].message.content", producer="llm",
                                detail="the model returned an empty answer")
