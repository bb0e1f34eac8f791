"""Storage ports: one Protocol per concern, and the records they return.

The pipeline and the bot talk to storage through these methods only (no SQL outside the
implementations), awaited: one set of classes (`core.store.Journal`, `History`, `Chats`,
`core.failures.dlq.DeadLetterQueue`, `core.failures.escalation.Outbox`,
`core.store.access.AccessRecords`, ...) runs on either engine of `core.store.engine`
(SQLite or PostgreSQL), written in the portable SQL its docstring describes.
tests/core/test_store.py checks each implementation against its Protocol, signatures included.

`now`/`before` arguments are ISO-8601 strings in the gateway's one format (`Clock.iso()`),
which sort in time order; ids are the engine's integer keys.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal, Protocol, runtime_checkable

from core.contracts import ChatMessage, DlqEntry, InboundMessage


@dataclass(frozen=True)
class JournalEntry:
    update_id: int
    chat_id: int | None
    user_id: int | None
    kind: str
    state: str
    raw: dict[str, Any]
    trace_id: str | None
    attempts: int


@dataclass(frozen=True)
class HistoryMessage:
    id: int
    role: str
    content: str
    tokens: int

    @cached_property
    def chat_message(self) -> ChatMessage:
        """This message as a prompt carries it, validated once: History keeps a chat's recent
        messages in memory, so a long conversation's prompt is not validated again every turn."""
        return ChatMessage.model_validate({"role": self.role, "content": self.content})  # a stored row: named errors


@dataclass(frozen=True)
class DlqRow:
    id: int
    trace_id: str
    chat_id: int | None
    user_id: int | None
    update_id: int | None
    inbound: InboundMessage
    error_kind: str
    error_message: str
    attempts: list[dict[str, Any]]
    first_failed_at: str
    last_failed_at: str
    status: str
    replayable: bool
    replay_trace_id: str | None
    updated_at: str

    @property
    def ref(self) -> str:
        return self.trace_id[:8]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    kind: str
    chat_id: int
    text: str
    parse_mode: str | None
    trace_id: str | None
    dedupe_key: str | None
    status: str
    attempts: int
    next_attempt_at: str
    last_error: str | None
    created_at: str
    sent_at: str | None
    reply_markup: str | None = None  # inline buttons, Telegram's JSON (alerts and pairing requests)


@dataclass(frozen=True)
class AccessDecision:
    """The operator's decision about a user (positive id) or a group (negative id)."""

    subject_id: int
    kind: str  # "user" | "group"
    status: str  # "approved" | "denied"
    name: str
    username: str | None
    decided_by: str
    decided_at: str


@dataclass(frozen=True)
class PairingCode:
    """A code given to a stranger (or for a group the bot was added to): pending -> approved |
    denied; usable until `expires_at`."""

    code: str
    subject_id: int
    kind: str
    name: str
    username: str | None
    status: str
    created_at: str
    expires_at: str


@runtime_checkable
class JournalStore(Protocol):
    """The inbox: every accepted update by update_id, received -> processing -> replied | failed | ignored."""

    async def accept(self, *, update_id: int, chat_id: int | None, user_id: int | None, kind: str,
               raw: dict[str, Any], trace_id: str | None, now: str) -> bool:
        """Record a new update; False when this update_id was seen before (a duplicate)."""
        ...

    async def mark(self, update_id: int, state: str, *, now: str, error: str | None = None,
             trace_id: str | None = None) -> None:
        """Move an update to `state`; entering `processing` counts an attempt."""
        ...

    async def state(self, update_id: int) -> str | None: ...

    async def unfinished(self, limit: int = 1000) -> list[JournalEntry]:
        """Updates still received or processing (a crash left them), oldest first."""
        ...

    async def prune(self, *, before: str) -> int:
        """Drop finished rows last updated before `before`; returns how many."""
        ...


@runtime_checkable
class HistoryStore(Protocol):
    """A chat's conversation: active messages feed the prompt, archived ones have left it."""

    async def append(self, *, chat_id: int, role: str, content: str, tokens: int, trace_id: str | None,
               update_id: int | None, now: str) -> int: ...

    async def recent(self, chat_id: int, *, max_tokens: int, max_messages: int = 400) -> list[HistoryMessage]:
        """The newest active messages that fit `max_tokens`, oldest first; cost bounded by what fits."""
        ...

    async def count_active(self, chat_id: int) -> int: ...

    async def older_than(self, chat_id: int, message_id: int, *, limit: int = 1000) -> list[HistoryMessage]: ...

    async def archive_through(self, chat_id: int, message_id: int) -> int:
        """Take active messages up to `message_id` out of the conversation; returns how many."""
        ...

    async def archive_cursor(self, chat_id: int) -> int:
        """The newest message id already copied into a history archive artifact (0 if none)."""
        ...

    async def advance_archive_cursor(self, chat_id: int, message_id: int) -> None:
        """Messages up to `message_id` are in an archive; the cursor never moves back."""
        ...

    async def start_new(self, chat_id: int) -> int:
        """/new: archive every active message of the chat; returns how many."""
        ...

    async def last_exchange(self, chat_id: int) -> list[HistoryMessage]:
        """/retry: the last active user message and what followed it, oldest first ([] if none)."""
        ...

    async def set_aside(self, chat_id: int, message_ids: list[int], *, aside: bool = True) -> int:
        """Take messages out of the conversation (or, `aside=False`, put them back)."""
        ...

    async def delete(self, chat_id: int, message_ids: list[int]) -> int: ...


@runtime_checkable
class ChatStore(Protocol):
    """Per-chat delivery facts: blocked by its user, and the last prompt's size."""

    async def mark_blocked(self, chat_id: int, reason: str, *, now: str) -> None: ...

    async def unblock(self, chat_id: int, *, now: str) -> None: ...

    async def is_blocked(self, chat_id: int) -> bool: ...

    async def record_prompt(self, chat_id: int, *, tokens: int, budget: int, trace_id: str, now: str) -> None: ...

    async def last_prompt(self, chat_id: int) -> tuple[int, int] | None:
        """(tokens, budget) of the chat's last prompt, if any."""
        ...


@runtime_checkable
class ChatModelStore(Protocol):
    """The model a chat chose with /model; None: the default."""

    async def get(self, chat_id: int) -> str | None: ...

    async def set(self, chat_id: int, model: str, *, now: str) -> None: ...

    async def clear(self, chat_id: int) -> None: ...


@runtime_checkable
class VoiceReplyStore(Protocol):
    """The chats that asked for spoken answers with /voice on; default off."""

    async def is_on(self, chat_id: int) -> bool: ...

    async def set(self, chat_id: int, on: bool, *, now: str) -> None: ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """Failed turns kept to run again: pending -> replaying -> replayed | pending; pending ->
    discarded | resolved. A replay is claimed atomically, so it never runs twice."""

    async def add(self, entry: DlqEntry, *, attempts: builtins.list[dict[str, Any]], now: str,
            update_id: int | None = None) -> int:
        """Record a failed turn; a second failure of the same pending turn updates its entry."""
        ...

    async def get(self, entry_id: int) -> DlqRow | None: ...

    async def list(self, status: str | None = "pending", limit: int = 50) -> builtins.list[DlqRow]:
        """Newest first; `status=None` lists every status."""
        ...

    async def depth(self) -> int: ...

    async def counts(self) -> dict[str, int]: ...

    async def claim_for_replay(self, entry_id: int, *, now: str) -> DlqRow | None:
        """pending -> replaying, atomically; None when the entry was not pending."""
        ...

    async def record_replay_error(self, entry_id: int, *, error_kind: str, error_message: str, replayable: bool,
                            now: str) -> bool: ...

    async def finish_replay(self, entry_id: int, *, ok: bool, trace_id: str, now: str, error: str | None = None) -> bool: ...

    async def release_stale_replays(self, *, before: str) -> int: ...

    async def discard(self, entry_id: int, *, now: str) -> bool: ...

    async def resolve(self, entry_id: int, *, now: str) -> bool: ...

    async def replayable_outage_entries(self, limit: int = 50) -> builtins.list[DlqRow]: ...

    async def evicted(self) -> int: ...


@runtime_checkable
class OutboxStore(Protocol):
    """Messages still to deliver (alerts, replies that could not be sent): pending -> sent | dead."""

    async def enqueue(self, *, kind: Literal["alert", "reply"], chat_id: int, text: str, trace_id: str | None,
                dedupe_key: str | None, now: str, parse_mode: str | None = None,
                reply_markup: dict[str, Any] | None = None) -> int | None:
        """Queue a message (with inline buttons when `reply_markup`); None when `dedupe_key` was queued before."""
        ...

    async def due(self, *, now: str, limit: int = 20) -> list[OutboxRow]:
        """Pending rows whose time has come, in id order, never overtaking an older row of their chat."""
        ...

    async def get(self, row_id: int) -> OutboxRow | None: ...

    async def mark_sent(self, row_id: int, *, now: str) -> None: ...

    async def mark_retry(self, row_id: int, *, error: str, next_attempt_at: str) -> None: ...

    async def mark_dead(self, row_id: int, *, error: str) -> None: ...

    async def depth(self) -> int: ...

    async def pending_for(self, chat_id: int) -> list[OutboxRow]: ...

    async def prune(self, *, before: str) -> int: ...


@runtime_checkable
class AccessStore(Protocol):
    """Who may chat beyond ALLOWED_USER_IDS: the operator's decisions and the pending pairing codes."""

    async def decision(self, subject_id: int) -> AccessDecision | None: ...

    async def statuses(self, subject_ids: tuple[int, ...]) -> dict[int, str]:
        """subject id -> "approved" | "denied", for those with a decision."""
        ...

    async def decide(self, *, subject_id: int, kind: str, status: str, name: str, username: str | None,
               decided_by: str, now: str) -> None:
        """Record a decision and close the subject's pending codes with the same status."""
        ...

    async def decisions(self, status: str, limit: int = 100) -> list[AccessDecision]: ...

    async def add_code(self, code: PairingCode) -> bool:
        """Store a new pending code; False when the code already exists."""
        ...

    async def pending_code(self, subject_id: int, *, now: str) -> PairingCode | None:
        """The subject's pending code still valid at `now`, if any."""
        ...

    async def code(self, code: str) -> PairingCode | None: ...

    async def pending_count(self, *, now: str) -> int: ...

    async def pending_codes(self, *, now: str, limit: int = 50) -> list[PairingCode]: ...

    async def codes_since(self, subject_id: int, *, since: str) -> int:
        """How many codes the subject was given since `since`."""
        ...

    async def prune(self, *, before: str) -> int:
        """Drop codes created before `before` that are no longer pending (or expired)."""
        ...
