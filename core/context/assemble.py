"""History assembly: the bounded prompt of a turn, built by the context stage and rebuilt
by the llm stage when the provider says the prompt was too long.

Token counts are computed once and stored (history rows, the hot state, the system prompt
and the tool definitions at start), so building a prompt costs the same at turn 10 and at
turn 10,000: only the current message is counted per turn. History that no longer fits is
archived as an artifact linked from the hot state, then leaves the active conversation
(archives are written in batches, ahead of need: see `archive_dropped`).
"""

from __future__ import annotations

import math
import sys
from operator import attrgetter
from typing import TYPE_CHECKING

from opentelemetry import trace

from core.context.artifacts import REF_PREFIX
from core.context.budget import HISTORY_SHRINK_FACTOR, plan_context
from core.context.hot_state import render
from core.context.images import ride_along
from core.context.tokens import REPLY_PRIMING_TOKENS
from core.context.tools import TOOLS, tools_tokens
from core.contracts import ChatMessage, ContextPlan, HotStateWrite, build

if TYPE_CHECKING:
    from core.context.turn_view import ContextServices, StoredMessage, TurnView

HISTORY_KIND = "history_archive"
# Messages moved out of the active conversation per turn at most (the rest follow next turn).
ARCHIVE_BATCH_LIMIT = 5000


def static_token_costs(services: ContextServices) -> tuple[int, int]:
    """Tokens of the base system prompt and of the tool definitions, counted once per process."""
    if services.static_tokens is None:
        system = services.counter.count_message(services.system_prompt) + REPLY_PRIMING_TOKENS
        services.static_tokens = (system, tools_tokens(counter=services.counter, tools=TOOLS))
    return services.static_tokens


async def assemble(turn: TurnView) -> None:
    """Build `turn.messages` and `turn.plan`: the system prompt with the hot state, the newest history
    that fits (less of it once the provider refused the prompt: `turn.history_share`), the message.
    Raises ContextTooLarge when even the message alone cannot fit; the caller records the plan
    (core.usage.record_prompt_metrics)."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    span = trace.get_current_span()
    base_system_tokens, tools_tokens = static_token_costs(services)
    current_tokens = services.counter.count_message(turn.user_text)
    turn.user_tokens = current_tokens
    # The chat's model's window (config/models.toml), else LLM_CONTEXT_TOKENS.
    context_tokens = services.models.spec(turn.model).context_tokens if turn.model else settings.llm_context_tokens
    prompt_budget = context_tokens - settings.llm_max_output_tokens
    shrinking = turn.history_share < 1.0
    history_cap = None
    if shrinking and isinstance(turn.plan, ContextPlan):
        # The provider refused the last prompt: carry at most half of its history this time.
        history_cap = math.floor(turn.plan.history_tokens * HISTORY_SHRINK_FACTOR)
    candidates = await services.history.recent(inbound.chat_id, max_tokens=max(0, prompt_budget))
    candidate_tokens = list(map(attrgetter("tokens"), candidates))
    # Images ride in the minimum prompt (counted even if their history message is then dropped).
    images = await ride_along(services.artifacts, inbound.chat_id, turn.user_text, candidates,
                        turns=settings.image_history_turns, vision=settings.llm_vision)
    current_tokens += images.tokens
    newest_first = candidate_tokens[::-1]
    active = await services.history.count_active(inbound.chat_id)
    # Archiving links the archive in the hot state, which changes its size: plan again (at most
    # twice more; the archive is written ahead of need, so the second round archives nothing).
    for _ in range(3):
        state = await services.hot_state.load(inbound.chat_id)
        hot_tokens = await services.hot_state.tokens(inbound.chat_id)
        system_tokens = base_system_tokens + hot_tokens + 2  # the blank line joining them
        plan = plan_context(system_tokens=system_tokens, current_tokens=current_tokens,
                            tools_tokens=tools_tokens,
                            history_tokens_newest_first=newest_first,
                            context_tokens=context_tokens,
                            reserve_output_tokens=settings.llm_max_output_tokens,
                            history_share=turn.history_share, max_history_tokens=history_cap)
        kept = candidates[len(candidates) - plan.history_kept:] if plan.history_kept else []
        if shrinking or len(kept) == active or not await archive_dropped(turn, kept=kept):
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
    current = ChatMessage(role="user", content=turn.user_text, images=images.current)
    # Each stored message's ChatMessage is validated once and shared by later turns (it is frozen).
    turn.messages = [system, *(m.chat_message.model_copy(update={"images": images.for_message(m.id)})
                               if images.for_message(m.id) else m.chat_message for m in kept), current]
    # What tool rounds need to keep the prompt within the budget (see `make_room`).
    turn.current_message = current
    turn.history_in_prompt = kept_tokens
    span.set_attributes({f"context.{k}": v for k, v in context_plan.model_dump().items() if k != "producer"})
    span.set_attribute("context.image_tokens", images.tokens)


async def archive_dropped(turn: TurnView, *, kept: list[StoredMessage]) -> bool:
    """Move the messages older than `kept` out of the active conversation, making sure each is
    in a history archive first; True when a new archive was written (the hot state changed).

    Archives are written ahead of need: besides the messages leaving now, one holds the older
    half of what stays in the prompt, so the next archive is due only once that half has scrolled
    out. A long conversation thus makes one archive per half a window of history (not one per
    turn), and the hot state keeps a single history link: each archive names the one before.
    """
    services, chat_id = turn.services, turn.inbound.chat_id
    boundary = kept[0].id if kept else sys.maxsize
    leaving = await services.history.older_than(chat_id, boundary, limit=ARCHIVE_BATCH_LIMIT)
    if not leaving:
        return False
    cursor = await services.history.archive_cursor(chat_id)
    unarchived = [m for m in leaving if m.id > cursor]
    if unarchived:
        ahead = [m for m in kept[: len(kept) // 2] if m.id > cursor]
        through = (ahead or unarchived)[-1].id
        await write_history_archive(turn, unarchived + ahead)
        await services.history.advance_archive_cursor(chat_id, through)
    await services.history.archive_through(chat_id, leaving[-1].id)
    return bool(unarchived)


async def write_history_archive(turn: TurnView, messages: list[StoredMessage]) -> None:
    """One transcript artifact for `messages`; the hot state's history link now points to it."""
    services, chat_id = turn.services, turn.inbound.chat_id
    state = await services.hot_state.load(chat_id)
    old_links = [item for item in state.artifacts if item.text.split(" ", 2)[1:2] == [HISTORY_KIND]]
    previous = old_links[-1].text.split(" ", 1)[0] if old_links else None
    if previous is None or not previous.startswith(REF_PREFIX):
        latest = await services.artifacts.latest(chat_id, HISTORY_KIND)
        previous = latest.ref if latest is not None else None
    first, last = messages[0].id, messages[-1].id
    header = [f"# Conversation history, messages #{first} to #{last}", ""]
    if previous:
        header += [f"Earlier history: {previous}", ""]
    transcript = "\n".join(header) + "\n" + "\n\n".join(f"**{m.role}** (#{m.id}):\n{m.content}" for m in messages)
    label = f"history #{first}-#{last}"
    info = await services.artifacts.put(content=transcript.encode(), media_type="text/markdown", chat_id=chat_id,
                                  user_id=None, label=label, summary=label, kind=HISTORY_KIND,
                                  trace_id=turn.inbound.trace_id, now=services.clock.iso())
    line = (f"{info.ref} {HISTORY_KIND} {label}: earlier conversation, {len(messages)} messages"
            + ("; it names the archive before it" if previous else ""))
    write = HotStateWrite(producer="pipeline", source="gateway", trace_id=turn.inbound.trace_id, chat_id=chat_id,
                          remove=tuple(item.n for item in old_links), add=(("artifacts", line),))
    turn.guard.check(write, producer=write.producer)
    await services.hot_state.apply(chat_id, write, now=services.clock.iso())


async def rebuild_smaller(turn: TurnView) -> None:
    """The retry after context_length_exceeded: the same turn with half the history budget.
    The tool rounds already made this turn (after the current message) are kept."""
    tail_start = len(turn.messages)
    for index, message in enumerate(turn.messages):
        if message.role == "user" and message.content == turn.user_text:
            tail_start = index + 1
    tail = turn.messages[tail_start:]
    turn.history_share *= HISTORY_SHRINK_FACTOR
    await assemble(turn)
    turn.messages.extend(tail)
