"""The bot's journal as e2e tests read it: a test waits for an update to be settled (replied,
ignored, throttled…) before asserting that it caused nothing, instead of sleeping and hoping."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def journal_states(bot: Any, update_ids: Iterable[int] | None = None) -> dict[int, str]:
    """The journal's state per update id (all rows, or those of ``update_ids``), read from the
    bot's database through the ``bot`` fixture (a BotFactory) on either backend; nothing before
    the bot has created and migrated it."""
    rows = bot.query("SELECT update_id, state FROM journal", missing_ok=True)
    wanted = None if update_ids is None else set(update_ids)
    return {uid: state for uid, state in rows if wanted is None or uid in wanted}


def settled(bot: Any, update_ids: Iterable[int]) -> bool:
    """Every one of ``update_ids`` is journaled and finished (neither received nor processing)."""
    ids = list(update_ids)
    states = journal_states(bot, ids)
    return len(states) == len(ids) and all(s not in ("received", "processing") for s in states.values())
