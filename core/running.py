"""Each chat's running turn, by its stop signal: what `/stop` looks up (core/control.py says how a
stopped turn ends). Kept apart from core/control.py so Services can hold it without a cycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class RunningTurns:
    """The stop signal of the turn running in each chat (at most one per chat)."""

    def __init__(self) -> None:
        self._stops: dict[int, asyncio.Event] = {}

    @contextlib.contextmanager
    def running(self, chat_id: int, stop: asyncio.Event) -> Iterator[None]:
        """Registers the turn for as long as it runs (the caller holds the chat's turn lock)."""
        self._stops[chat_id] = stop
        try:
            yield
        finally:
            if self._stops.get(chat_id) is stop:
                del self._stops[chat_id]

    def is_running(self, chat_id: int) -> bool:
        return chat_id in self._stops

    def stop(self, chat_id: int) -> bool:
        """Ask the chat's running turn to stop; False when nothing runs there."""
        stop = self._stops.get(chat_id)
        if stop is None or stop.is_set():
            return False
        stop.set()
        return True
