"""Room in a turn's prompt for tool results: the prompt stays within the budget the context
stage planned while tool rounds add to it (history leaves the prompt first, then earlier results).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from core.contracts import ChatMessage, ContextPlan

if TYPE_CHECKING:
    from core.context.turn_view import TurnView

# Room a tool result leaves free for the model's next tool-call message.
TOOL_ROUND_RESERVE_TOKENS = 200
# What an earlier tool result of the turn becomes when nothing else is left to make room.
REMOVED_RESULT = json.dumps({"ok": False, "error": "this earlier result was removed to keep the prompt within the"
                                                   " context window"})


def tool_rounds_tokens(turn: TurnView) -> int:
    """Tokens the tool rounds added after the current message (new text: counted once here)."""
    counter = turn.services.counter
    total = 0
    for message in turn.messages[_current_index(turn) + 1:]:
        total += counter.count_message(message.content or "")
        if message.tool_calls:
            total += counter.count(json.dumps(message.to_openai()["tool_calls"]))
    return total


def _current_index(turn: TurnView) -> int:
    current = turn.current_message
    return next(i for i, m in enumerate(turn.messages) if m is current)


def tool_result_room(turn: TurnView) -> int:
    """Tokens a tool result may take in this turn's prompt once the history made room for it,
    keeping TOOL_ROUND_RESERVE_TOKENS for the model's next tool-call message."""
    plan = turn.plan
    assert isinstance(plan, ContextPlan)
    fixed = plan.total_tokens - plan.history_tokens
    return plan.budget_tokens - fixed - tool_rounds_tokens(turn) - TOOL_ROUND_RESERVE_TOKENS


def make_room(turn: TurnView, tokens: int) -> bool:
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
