"""context: system prompt + hot state + the history that fits + the message, token-budgeted.
The assembly lives in core/context/assemble.py, and `core.turn.plan_prompt` (shared with the llm
stage, which rebuilds the prompt after an overflow) records its plan."""

from __future__ import annotations

from core.turn import Turn, plan_prompt


async def run(turn: Turn) -> None:
    await plan_prompt(turn)
