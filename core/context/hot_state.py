"""Per-chat hot state: a small structured working memory rendered into the system prompt.

The state is an objective plus numbered items in sections. Numbers (`n`) are what /state
shows and what `remove` takes: unique within a chat and never reused (`next_n` only grows).
`seq` orders everything the state recorded (item adds and objective changes).

Bounded: the rendered block never exceeds `max_tokens`. `compact` evicts WHOLE items in a
fixed order (documented in `eviction_order`); the store writes them to an archive artifact.

Archive design (instead of a list of archive refs or link items): the state keeps ONE pointer,
`archive_ref`, to the newest archive, rendered as a single pinned line that is never evicted.
Each archive's Markdown names the archive before it ("Earlier archive: artifact://..."), so
every evicted item stays reachable through one chain while the prompt pays for one line only.
`compact` reserves room for that line with a worst-case ref, so setting the real ref fits.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.context.database import ContextDatabase
from core.context.tokens import TokenCounter
from core.contracts import ContractViolation, HotStateWrite

Section = Literal["decisions", "open_questions", "constraints", "facts", "last_step", "artifacts"]
Source = Literal["user", "agent", "gateway"]
# Render order: what binds the agent first, the artifact index last.
SECTIONS: tuple[str, ...] = ("constraints", "decisions", "facts", "open_questions", "last_step", "artifacts")
# Eviction order: the cheapest to lose first; the artifact index last (it is how documents are found).
EVICTION_ORDER: tuple[str, ...] = ("last_step", "open_questions", "facts", "decisions", "constraints", "artifacts")
# Within a section: agent notes go before gateway entries, and what the user said goes last.
SOURCE_EVICTION_RANK = {"agent": 0, "gateway": 1, "user": 2}
MAX_ITEM_CHARS = 500
MAX_OBJECTIVE_CHARS = 2000
MAX_ADDS_PER_WRITE = 20
OBJECTIVE = "objective"  # the section name of the pseudo-item an objective truncation archives
# Sixteen hex digits that tokenize one character per token: an upper bound for any real ref.
WORST_CASE_REF = "artifact://" + "a1" * 8
POINTER_SLACK_TOKENS = 2
ArchiveFn = Callable[[int, str, str], Awaitable[str]]  # (chat_id, markdown, label) -> "artifact://<hex>"


class Item(BaseModel):
    """One numbered entry of the hot state."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(ge=0)
    section: Section | Literal["objective"]
    text: str
    source: Source
    seq: int = Field(ge=0)


class HotState(BaseModel):
    """A chat's working memory; immutable, every change makes a new value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    objective: str = ""
    objective_source: Source = "user"
    items: tuple[Item, ...] = ()
    next_n: int = Field(default=1, ge=1)
    next_seq: int = Field(default=1, ge=1)
    archive_ref: str | None = Field(default=None, pattern=r"^artifact://[0-9a-f]{12,64}$")

    @model_validator(mode="after")
    def _consistent(self) -> HotState:
        numbers = [item.n for item in self.items]
        if len(set(numbers)) != len(numbers):
            raise ValueError("hot state item numbers must be unique")
        for item in self.items:
            if item.section == OBJECTIVE or not 1 <= item.n < self.next_n or item.seq >= self.next_seq:
                raise ValueError(f"hot state item {item.n} is inconsistent with the counters")
        return self

    def section(self, name: str) -> tuple[Item, ...]:
        """One section's items, by number."""
        return tuple(sorted((i for i in self.items if i.section == name), key=lambda i: i.n))

    @property
    def artifacts(self) -> tuple[Item, ...]:
        """The artifact index (gateway-written lines: ref, kind, label, summary)."""
        return self.section("artifacts")


def clean_text(text: str) -> str:
    """Drop control and surrogate characters, collapse whitespace (one item = one line)."""
    kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs"))
    return " ".join(kept.split())


def apply_write(state: HotState, write: HotStateWrite) -> tuple[HotState, list[str]]:
    """The state after `write` (objective, then removals, then additions) and a note per action."""
    notes: list[str] = []
    objective, objective_source, next_seq = state.objective, state.objective_source, state.next_seq
    if write.set_objective is not None:
        objective, objective_source = clean_text(write.set_objective)[:MAX_OBJECTIVE_CHARS], write.source
        next_seq += 1
        notes.append("objective set" if objective else "objective cleared")
    items = list(state.items)
    for number in dict.fromkeys(write.remove):
        found = [item for item in items if item.n == number]
        if not found:
            notes.append(f"no item {number}")
            continue
        items.remove(found[0])
        notes.append(f"removed item {number}")
    next_n = state.next_n
    for index, (section, text) in enumerate(write.add):
        if index == MAX_ADDS_PER_WRITE:
            notes.append(f"at most {MAX_ADDS_PER_WRITE} items per update: {len(write.add) - index} not added")
            break
        if section not in SECTIONS:
            notes.append(f"unknown section {section[:40]!r}: use one of {', '.join(SECTIONS)}")
            continue
        cleaned = clean_text(text)
        if not cleaned:
            notes.append(f"empty {section} item refused")
            continue
        if len(cleaned) > MAX_ITEM_CHARS:
            notes.append(f"{section} item refused: {len(cleaned)} characters > {MAX_ITEM_CHARS}; shorten it")
            continue
        duplicate = next((i for i in items if i.section == section and i.text == cleaned), None)
        if duplicate is not None:
            notes.append(f"already item {duplicate.n}")
            continue
        items.append(Item(n=next_n, section=section, text=cleaned, source=write.source, seq=next_seq))  # type: ignore[arg-type]
        notes.append(f"added item {next_n} to {section}")
        next_n, next_seq = next_n + 1, next_seq + 1
    new_state = HotState(objective=objective, objective_source=objective_source, items=tuple(items),
                         next_n=next_n, next_seq=next_seq, archive_ref=state.archive_ref)
    return new_state, notes


_TAG = re.compile(r"<(/?\s*hot_state)", re.IGNORECASE)


def _escape(text: str) -> str:
    """Stored text cannot close or reopen the block it is rendered in."""
    return _TAG.sub(r"&lt;\1", text)


def render(state: HotState) -> str:
    """The `<hot_state>` block for the system prompt: deterministic, one line per item."""
    lines = ["<hot_state>"]
    if state.objective:
        lines.append(f"objective: {_escape(state.objective)}")
    for section in SECTIONS:
        items = state.section(section)
        if items:
            lines.append(f"{section}:")
            lines.extend(f"[{item.n}] {_escape(item.text)}" for item in items)
    if state.archive_ref:
        lines.append(f"archive: {state.archive_ref} (older items; read_artifact)")
    lines.append("</hot_state>")
    return "\n".join(lines)


def eviction_order(state: HotState) -> list[Item]:
    """Items in the order they are evicted: by section (EVICTION_ORDER), then agent before
    gateway before user, then oldest (lowest seq) first."""
    priority = {section: index for index, section in enumerate(EVICTION_ORDER)}
    return sorted(state.items, key=lambda i: (priority[i.section], SOURCE_EVICTION_RANK[i.source], i.seq, i.n))


def min_hot_state_tokens(*, counter: TokenCounter) -> int:
    """The smallest cap that can hold an empty state with its archive pointer."""
    return counter.count(render(HotState(archive_ref=WORST_CASE_REF))) + POINTER_SLACK_TOKENS


def compact(state: HotState, *, counter: TokenCounter, max_tokens: int) -> tuple[HotState, list[Item]]:
    """Evict whole items (`eviction_order`) until the render fits `max_tokens` with room for an
    archive pointer; only when no item is left is the objective truncated (the full objective
    is returned as an `objective` pseudo-item, n=0). Returns the state and what was evicted."""
    if counter.count(render(state)) <= max_tokens:
        return state, []
    limit = max_tokens - POINTER_SLACK_TOKENS
    order = eviction_order(state)

    def fits(candidate: HotState) -> bool:
        return counter.count(render(candidate.model_copy(update={"archive_ref": WORST_CASE_REF}))) <= limit

    def without(count: int) -> HotState:
        gone = {item.n for item in order[:count]}
        return state.model_copy(update={"items": tuple(i for i in state.items if i.n not in gone)})

    if order and fits(without(len(order))):
        low, high = 0, len(order)  # invariant: without(low) does not fit, without(high) fits
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(without(middle)) else (middle, high)
        return without(high), order[:high]
    bare = without(len(order))
    tokens = counter.encoding.encode(state.objective, disallowed_special=())

    def shortened(keep: int) -> HotState:
        text = counter.encoding.decode(tokens[:keep]).rstrip() + "…" if keep else ""
        return bare.model_copy(update={"objective": text})

    if not fits(shortened(0)):
        raise ValueError(f"max_tokens={max_tokens} cannot hold an empty hot state with its archive pointer")
    low, high = 0, len(tokens)  # invariant: shortened(low) fits, shortened(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(shortened(middle)) else (low, middle)
    whole = Item(n=0, section=OBJECTIVE, text=state.objective, source=state.objective_source, seq=0)
    return shortened(low), [*order, whole] if state.objective else order


def archive_markdown(evicted: list[Item], *, previous_ref: str | None, now: str) -> str:
    """The archive artifact's text: every evicted item with its number, section and source."""
    lines = ["# Hot state archive", "",
             f"Items moved out of this chat's hot state at {now} to keep it within its token cap;"
             " numbers are the ones /state showed.", ""]
    if previous_ref:
        lines += [f"Earlier archive: {previous_ref}", ""]
    for item in sorted(evicted, key=lambda i: i.n):
        if item.section == OBJECTIVE:
            lines.append(f"- objective ({item.source}, full text before it was shortened): {item.text}")
        else:
            lines.append(f"- [{item.n}] {item.section} ({item.source}): {item.text}")
    return "\n".join(lines) + "\n"


_TITLES = {"constraints": "Constraints", "decisions": "Decisions", "facts": "Facts",
           "open_questions": "Open questions", "last_step": "Last step", "artifacts": "Artifacts"}


def format_for_user(state: HotState, *, tokens: int, cap: int) -> str:
    """What /state shows: every item with its number and who wrote it, and the token use."""
    lines = [f"Hot state: {tokens} / {cap} tokens", f"Objective: {state.objective or '(none)'}"]
    for section in SECTIONS:
        items = state.section(section)
        if items:
            lines += ["", f"{_TITLES[section]}:"]
            lines.extend(f"  {item.n}. {item.text} ({item.source})" for item in items)
    if not state.items:
        lines += ["", "No items yet."]
    if state.archive_ref:
        lines += ["", f"Older items are archived in {state.archive_ref}"]
    return "\n".join(lines)


class HotStateStore:
    """Loads, compacts, archives and saves hot states in the `hot_state` table.

    Turns of one chat are serialized by the pipeline; `apply` is load-modify-save. No in-process
    cache: every load reads the row, so on PostgreSQL another instance's write is seen at once.
    """

    format_for_user = staticmethod(format_for_user)

    def __init__(self, db: ContextDatabase, *, counter: TokenCounter, max_tokens: int,
                 archive: ArchiveFn) -> None:
        floor = min_hot_state_tokens(counter=counter)
        if max_tokens < floor:
            raise ValueError(f"HOT_STATE_MAX_TOKENS={max_tokens} is below the minimum of {floor}")
        self.db, self.counter, self.max_tokens, self.archive = db, counter, max_tokens, archive

    async def load(self, chat_id: int) -> HotState:
        """The chat's state (empty when none); a corrupt row raises pydantic's ValidationError."""
        row = await self.db.fetchone("SELECT state_json FROM hot_state WHERE chat_id = ?", [chat_id])
        return HotState.model_validate_json(row[0]) if row else HotState()

    async def tokens(self, chat_id: int) -> int:
        """The stored token count of the rendered state (no recount)."""
        row = await self.db.fetchone("SELECT tokens FROM hot_state WHERE chat_id = ?", [chat_id])
        return int(row[0]) if row else 0

    async def save(self, chat_id: int, state: HotState, *, trace_id: str | None, now: str) -> tuple[HotState, int]:
        """Compact, archive what was evicted, persist; returns the saved state and its tokens."""
        saved, tokens, _ = await self._save(chat_id, state, trace_id=trace_id, now=now)
        return saved, tokens

    async def apply(self, chat_id: int, write: HotStateWrite, *, now: str) -> tuple[HotState, list[str]]:
        """Load, apply `write`, save; the notes say what happened (and what was archived)."""
        if write.chat_id != chat_id:
            raise ContractViolation("one_turn_identity", field="chat_id", producer=write.producer,
                                    detail=f"a write for chat {write.chat_id} applied to chat {chat_id}")
        state, notes = apply_write(await self.load(chat_id), write)
        saved, _, evicted = await self._save(chat_id, state, trace_id=write.trace_id, now=now)
        if evicted:
            notes.append(f"hot state over {self.max_tokens} tokens: {evicted} items archived in {saved.archive_ref}")
        return saved, notes

    async def _save(self, chat_id: int, state: HotState, *, trace_id: str | None, now: str) -> tuple[HotState, int, int]:
        evicted_total = 0
        # Each round evicts at least one item or shortens the objective, so this ends; the bound
        # is a guard (fail closed) should the pointer ever exceed its reserved worst case.
        for _ in range(len(state.items) + 3):
            compacted, evicted = compact(state, counter=self.counter, max_tokens=self.max_tokens)
            if not evicted:
                break
            markdown = archive_markdown(evicted, previous_ref=state.archive_ref, now=now)
            label = f"hot state archive: {len(evicted)} items"
            ref = await self.archive(chat_id, markdown, label)
            state = HotState.model_validate({**compacted.model_dump(), "archive_ref": ref})
            evicted_total += len(evicted)
        tokens = self.counter.count(render(state))
        if tokens > self.max_tokens:
            raise RuntimeError(f"hot state of chat {chat_id} did not fit {self.max_tokens} tokens ({tokens})")
        await self.db.execute(
            "INSERT INTO hot_state(chat_id, state_json, tokens, trace_id, updated_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(chat_id) DO UPDATE SET state_json = excluded.state_json, tokens = excluded.tokens,"
            " trace_id = excluded.trace_id, updated_at = excluded.updated_at",
            [chat_id, state.model_dump_json(), tokens, trace_id, now])
        return state, tokens, evicted_total
