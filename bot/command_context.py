"""What a slash command gets to work with, and what it answers.

Commands see the services, who asked and where, and the replay functions: not the runtime,
so `bot.commands` depends on nothing else in `bot` and the runtime can import it freely.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.replay import ReplayResult
from core.services import Services


@dataclass(frozen=True)
class Reply:
    """A command's answer: text, and optionally a file or a picture (sent by the router)."""

    text: str = ""
    document: tuple[str, bytes] | None = None  # (file name, bytes)
    photo: bytes | None = None
    document_ref: str = ""  # what the document is (an artifact ref), named if it cannot be sent


@dataclass(frozen=True)
class CommandContext:
    services: Services
    chat_id: int
    user_id: int
    user_name: str
    args: str
    trace_id: str
    replay: Callable[[int], Awaitable[ReplayResult]]  # one DLQ entry, answered in its own chat
    replay_all: Callable[[], Awaitable[list[ReplayResult]]]  # every pending Telegram entry
    # A turn in this chat for this text, as if the user had sent it; returns its outcome (/retry).
    run_turn: Callable[[str], Awaitable[str]] | None = None

    @property
    def is_operator(self) -> bool:
        return self.services.is_operator_chat(self.chat_id)
