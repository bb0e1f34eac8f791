"""Context and budget stages: build a bounded prompt, then refuse it if it could cross a cap.

Token counts are computed once and stored (history rows, the hot state, the system prompt
and the tool definitions at start), so building a prompt costs the same at turn 10 and at
turn 10,000: only the current message is counted per turn. History that no longer fits is
archived as an artifact linked from the hot state, then leaves the active conversation
(archives are written in batches, ahead of need: see `archive_dropped`).
"""

from __future__ import annotations

import json
import math
import sys
from operator import attrgetter
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.context.budget import HISTORY_SHRINK_FACTOR, ContextTooLarge, plan_context
from core.context.hot_state import render
from core.context.tokens import REPLY_PRIMING_TOKENS
from core.context.tools import TOOLS, tools_tokens
from core.contracts import ChatMessage, ContextPlan, ContractViolation, HotStateWrite, build
from core.failures.taxonomy import Kind
from core.outcomes import NoticeError
from core.store import transaction
from core.usage import (
    CapDecision,
    CapName,
    check_caps,
    cost_usd,
    daily_warning_key,
    monthly_warning_key,
    utc_day,
    utc_month,
)
from core.usage_text import format_cap_warning, format_refusal

if TYPE_CHECKING:
    from datetime import datetime

    from core.pipeline import Turn
    from core.services import Services
    from core.store import HistoryMessage

HISTORY_KIND = "history_archive"
# Messages moved out of the active conversation per turn at most (the rest follow next turn).
ARCHIVE_BATCH_LIMIT = 5000


def static_token_costs(services: Services) -> tuple[int, int]:
    """Tokens of the base system prompt and of the tool definitions, counted once per process."""
    if services.static_tokens is None:
        system = services.counter.count_message(services.system_prompt) + REPLY_PRIMING_TOKENS
        services.static_tokens = (system, tools_tokens(counter=services.counter, tools=TOOLS))
    return services.static_tokens


async def context_stage(turn: Turn) -> None:
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    span = trace.get_current_span()
    base_system_tokens, tools_tokens = static_token_costs(services)
    current_tokens = services.counter.count_message(turn.user_text)
    turn.user_tokens = current_tokens
    prompt_budget = settings.llm_context_tokens - settings.llm_max_output_tokens
    shrinking = turn.history_share < 1.0
    history_cap = None
    if shrinking and isinstance(turn.plan, ContextPlan):
        # The provider refused the last prompt: carry at most half of its history this time.
        history_cap = math.floor(turn.plan.history_tokens * HISTORY_SHRINK_FACTOR)
    candidates = services.history.recent(inbound.chat_id, max_tokens=max(0, prompt_budget))
    candidate_tokens = list(map(attrgetter("tokens"), candidates))
    newest_first = candidate_tokens[::-1]
    active = services.history.count_active(inbound.chat_id)
    # Archiving links the archive in the hot state, which changes its size: plan again (at most
    # twice more; the archive is written ahead of need, so the second round archives nothing).
    for _ in range(3):
        state = services.hot_state.load(inbound.chat_id)
        hot_tokens = services.hot_state.tokens(inbound.chat_id)
        system_tokens = base_system_tokens + hot_tokens + 2  # the blank line joining them
        try:
            plan = plan_context(system_tokens=system_tokens, current_tokens=current_tokens,
                                tools_tokens=tools_tokens,
                                history_tokens_newest_first=newest_first,
                                context_tokens=settings.llm_context_tokens,
                                reserve_output_tokens=settings.llm_max_output_tokens,
                                history_share=turn.history_share, max_history_tokens=history_cap)
        except ContextTooLarge as error:
            raise NoticeError(Kind.context_too_large, error.user_message, detail=str(error)) from None
        kept = candidates[len(candidates) - plan.history_kept:] if plan.history_kept else []
        if shrinking or len(kept) == active or not archive_dropped(turn, kept=kept):
            break
    kept_tokens = candidate_tokens[len(candidates) - len(kept):]
    history_tokens = sum(kept_tokens)
    context_plan = build(
        ContextPlan, "context_plan_sane", "pipeline", system_tokens=system_tokens, hot_state_tokens=hot_tokens,
        hot_state_cap=settings.hot_state_max_tokens, history_tokens=history_tokens, history_kept=len(kept),
        history_dropped=max(0, active - len(kept)), current_tokens=current_tokens, tools_tokens=tools_tokens,
        artifact_count=len(state.artifacts),
        total_tokens=system_tokens + history_tokens + current_tokens + tools_tokens, budget_tokens=prompt_budget)
    turn.plan = context_plan
    system = ChatMessage(role="system", content=f"{services.system_prompt}\n\n{render(state)}")
    current = ChatMessage(role="user", content=turn.user_text)
    # Each stored message's ChatMessage is validated once and shared by later turns (it is frozen).
    turn.messages = [system, *(m.chat_message for m in kept), current]
    # What tool rounds need to keep the prompt within the budget (see `make_room`).
    turn.current_message = current
    turn.history_in_prompt = kept_tokens
    span.set_attributes({f"context.{k}": v for k, v in context_plan.model_dump().items() if k != "producer"})
    record_prompt_metrics(services, turn, context_plan)


# Room a tool result leaves free for the model's next tool-call message.
TOOL_ROUND_RESERVE_TOKENS = 200
# What an earlier tool result of the turn becomes when nothing else is left to make room.
REMOVED_RESULT = json.dumps({"ok": False, "error": "this earlier result was removed to keep the prompt within the"
                                                   " context window"})


def tool_rounds_tokens(turn: Turn) -> int:
    """Tokens the tool rounds added after the current message (new text: counted once here)."""
    counter = turn.services.counter
    total = 0
    for message in turn.messages[_current_index(turn) + 1:]:
        total += counter.count_message(message.content or "")
        if message.tool_calls:
            total += counter.count(json.dumps(message.to_openai()["tool_calls"]))
    return total


def _current_index(turn: Turn) -> int:
    current = turn.current_message
    return next(i for i, m in enumerate(turn.messages) if m is current)


def tool_result_room(turn: Turn) -> int:
    """Tokens a tool result may take in this turn's prompt once the history made room for it,
    keeping TOOL_ROUND_RESERVE_TOKENS for the model's next tool-call message."""
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    fixed = plan.total_tokens - plan.history_tokens
    return plan.budget_tokens - fixed - tool_rounds_tokens(turn) - TOOL_ROUND_RESERVE_TOKENS


def make_room(turn: Turn, tokens: int) -> bool:
    """Make `tokens` more fit this turn's prompt budget: drop the oldest history messages from
    the prompt (not from storage), then, as a last resort, replace this turn's earlier tool
    results with a short note, oldest first. False if it still does not fit."""
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    counter = turn.services.counter
    history = turn.history_in_prompt
    used = plan.total_tokens - plan.history_tokens + sum(history) + tool_rounds_tokens(turn)
    while used + tokens > plan.budget_tokens and history:
        used -= history.pop(0)
        del turn.messages[1]  # the oldest history message: right after the system message
    for index in range(_current_index(turn) + 1, len(turn.messages)):
        if used + tokens <= plan.budget_tokens:
            break
        message = turn.messages[index]
        if message.role != "tool" or message.content == REMOVED_RESULT:
            continue
        saved = counter.count_message(message.content or "") - counter.count_message(REMOVED_RESULT)
        if saved > 0:
            turn.messages[index] = ChatMessage(role="tool", tool_call_id=message.tool_call_id, content=REMOVED_RESULT)
            used -= saved
    return used + tokens <= plan.budget_tokens


def record_prompt_metrics(services: Services, turn: Turn, plan: ContextPlan) -> None:
    now = services.clock.iso()
    with transaction(services.db):
        _write_prompt_metrics(services, turn, plan, now)


def _write_prompt_metrics(services: Services, turn: Turn, plan: ContextPlan, now: str) -> None:
    services.db.execute(
        "INSERT OR REPLACE INTO prompt_metrics(trace_id, chat_id, at, hot_state_tokens, history_tokens,"
        " history_kept, history_dropped, artifact_count, total_tokens, budget_tokens) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [turn.inbound.trace_id, turn.inbound.chat_id, now, plan.hot_state_tokens, plan.history_tokens,
         plan.history_kept, plan.history_dropped, plan.artifact_count, plan.total_tokens, plan.budget_tokens])
    services.chats.record_prompt(turn.inbound.chat_id, tokens=plan.total_tokens, budget=plan.budget_tokens,
                                 trace_id=turn.inbound.trace_id, now=now)


def archive_dropped(turn: Turn, *, kept: list[HistoryMessage]) -> bool:
    """Move the messages older than `kept` out of the active conversation, making sure each is
    in a history archive first; True when a new archive was written (the hot state changed).

    Archives are written ahead of need: besides the messages leaving now, one holds the older
    half of what stays in the prompt, so the next archive is due only once that half has scrolled
    out. A long conversation thus makes one archive per half a window of history (not one per
    turn), and the hot state keeps a single history link: each archive names the one before.
    """
    services, chat_id = turn.services, turn.inbound.chat_id
    boundary = kept[0].id if kept else sys.maxsize
    leaving = services.history.older_than(chat_id, boundary, limit=ARCHIVE_BATCH_LIMIT)
    if not leaving:
        return False
    cursor = services.history.archive_cursor(chat_id)
    unarchived = [m for m in leaving if m.id > cursor]
    if unarchived:
        ahead = [m for m in kept[: len(kept) // 2] if m.id > cursor]
        through = (ahead or unarchived)[-1].id
        write_history_archive(turn, unarchived + ahead)
        services.history.advance_archive_cursor(chat_id, through)
    services.history.archive_through(chat_id, leaving[-1].id)
    return bool(unarchived)


def write_history_archive(turn: Turn, messages: list[HistoryMessage]) -> None:
    """One transcript artifact for `messages`; the hot state's history link now points to it."""
    from core.context.artifacts import REF_PREFIX

    services, chat_id = turn.services, turn.inbound.chat_id
    state = services.hot_state.load(chat_id)
    old_links = [item for item in state.artifacts if item.text.split(" ", 2)[1:2] == [HISTORY_KIND]]
    previous = old_links[-1].text.split(" ", 1)[0] if old_links else None
    if previous is None or not previous.startswith(REF_PREFIX):
        latest = services.artifacts.latest(chat_id, HISTORY_KIND)
        previous = latest.ref if latest is not None else None
    first, last = messages[0].id, messages[-1].id
    header = [f"# Conversation history, messages #{first} to #{last}", ""]
    if previous:
        header += [f"Earlier history: {previous}", ""]
    transcript = "\n".join(header) + "\n" + "\n\n".join(f"**{m.role}** (#{m.id}):\n{m.content}" for m in messages)
    label = f"history #{first}-#{last}"
    info = services.artifacts.put(content=transcript.encode(), media_type="text/markdown", chat_id=chat_id,
                                  user_id=None, label=label, summary=label, kind=HISTORY_KIND,
                                  trace_id=turn.inbound.trace_id, now=services.clock.iso())
    line = (f"{info.ref} {HISTORY_KIND} {label}: earlier conversation, {len(messages)} messages"
            + ("; it names the archive before it" if previous else ""))
    write = HotStateWrite(producer="pipeline", source="gateway", trace_id=turn.inbound.trace_id, chat_id=chat_id,
                          remove=tuple(item.n for item in old_links), add=(("artifacts", line),))
    turn.guard.check(write, producer=write.producer)
    services.hot_state.apply(chat_id, write, now=services.clock.iso())


async def budget_stage(turn: Turn) -> None:
    """Refuse before the call if this turn, at its maximum (the prompt plus a full answer), could
    cross a cap; warn once per period when it takes a cap past 80%."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    now = services.clock.now()
    estimated_tokens = plan.total_tokens + settings.llm_max_output_tokens
    price = services.prices.price_for(settings.llm_model)
    estimated_cost = cost_usd(price=price, input_tokens=plan.total_tokens, output_tokens=settings.llm_max_output_tokens)
    is_operator = services.is_operator_user(inbound.user_id)
    used_today = services.ledger.user_day_tokens(inbound.user_id, utc_day(now))
    month_cost = services.ledger.month_cost_usd(utc_month(now))
    decision = check_caps(is_operator=is_operator, estimated_tokens=estimated_tokens,
                          estimated_cost_usd=estimated_cost, user_tokens_today=used_today,
                          user_daily_token_cap=settings.user_daily_token_budget, month_cost_usd=month_cost,
                          monthly_cap_usd=settings.monthly_budget_usd)
    trace.get_current_span().set_attributes({
        "budget.estimated_tokens": estimated_tokens, "budget.user_tokens_today": used_today,
        "budget.month_cost_usd": month_cost, "budget.allowed": decision.allowed})
    if not decision.allowed:
        turn.outcome = "notice"
        raise NoticeError(Kind.budget_exhausted, format_refusal(decision, now=now), detail=f"cap {decision.cap}")
    for cap in decision.warn:
        await warn_once(turn, cap, decision, now=now)


async def warn_once(turn: Turn, cap: CapName, decision: CapDecision, *, now: datetime) -> None:
    """The 80% heads-up, once per period: the daily one to the user, the monthly one to the operator."""
    from core.contracts import Escalation

    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    if cap == "user_daily_tokens":
        if services.warnings.once(daily_warning_key(inbound.user_id, utc_day(now)), now=now.isoformat()):
            await turn.send("notice", format_cap_warning(cap=cap, now=now, used=decision.user_tokens_after,
                                                         limit=settings.user_daily_token_budget))
    elif cap == "monthly_usd" and services.warnings.once(monthly_warning_key(utc_month(now)), now=now.isoformat()):
        services.escalator.raise_alert(Escalation(
            producer="pipeline", key=f"monthly80:{utc_month(now)}", kind="budget_warning", severity="warning",
            summary=format_cap_warning(cap=cap, now=now, used=decision.month_cost_after_usd,
                                       limit=settings.monthly_budget_usd),
            action="raise MONTHLY_BUDGET_USD or expect refusals when it is reached (/budget shows the spend)",
            trace_id=inbound.trace_id), now=now)


def check_answer_contract(text: str) -> None:
    if not text.strip():
        raise ContractViolation("llm_answer_not_empty", field="choices[0].message.content", producer="llm",
                                detail="the model returned an empty answer")
