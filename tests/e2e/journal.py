"""The bot's journal as e2e tests read it: a test waits for an update to be settled (replied,
ignored, throttled…) before asserting that it caused nothing, instead of sleeping and hoping."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def journal_states(data_dir: Path, update_ids: Iterable[int] | None = None) -> dict[int, str]:
    """The journal's state per update id (all rows, or those of ``update_ids``), read from the
    bot's gateway.db: a test waits for an update to be settled (replied, ignored, throttled…)
    before asserting that it caused nothing, instead of sleeping and hoping."""
    path = Path(data_dir) / "gateway.db"
    if not path.exists():
        return {}
    db = sqlite3.connect(path, timeout=5)
    try:
        rows = db.execute("SELECT update_id, state FROM journal").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return {}
    finally:
        db.close()
    wanted = None if update_ids is None else set(update_ids)
    return {uid: state for uid, state in rows if wanted is None or uid in wanted}


def settled(data_dir: Path, update_ids: Iterable[int]) -> bool:
    """Every one of ``update_ids`` is journaled and finished (neither received nor processing)."""
    ids = list(update_ids)
    states = journal_states(data_dir, ids)
    return len(states) == len(ids) and all(s not in ("received", "processing") for s in states.values())
