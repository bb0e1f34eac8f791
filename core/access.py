"""Who may chat (ACCESS_POLICY), and pairing: a stranger gets a code, the operator approves it.

`open`: anyone. `allowlist`: ALLOWED_USER_IDS, the operator, and whoever the operator added
with /allow. `pairing` (the default with an operator): the same, and a stranger who writes gets
a code `XXXX-XXXX` (valid CODE_VALID_S; writing again within it repeats the same code) while the
operator's chat gets one request with Approve / Deny buttons, through the outbox (deduplicated
per code). Bounded: at most MAX_PENDING codes wait at once, and a stranger gets at most
MAX_CODES_PER_DAY codes per UTC day. A group the bot is added to gets a request the same way;
its members may then talk to the bot there (mentions and replies, as in any group).
ALLOWED_USER_IDS and the operator are always allowed; a denied user is refused everywhere.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from config.settings import Settings
from core.callbacks import pairing_keyboard
from core.clock import Clock
from core.store.interfaces import AccessStore, OutboxStore, PairingCode

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # capital letters and digits without 0/O, 1/I/L
CODE_VALID_S = 3600.0
MAX_PENDING = 20
MAX_CODES_PER_DAY = 5
CODE_RE = re.compile(r"([A-Z2-9]{4})-?([A-Z2-9]{4})")
WELCOME = "You're in: send your message again."
GROUP_WELCOME = "This group is approved: mention me or reply to my messages to ask something."


def new_code() -> str:
    """A fresh pairing code from the `secrets` module: 8 of 31 symbols, about 40 bits."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(8))
    return f"{body[:4]}-{body[4:]}"


def normalize_code(text: str) -> str | None:
    """`abcd-efgh`, `ABCDEFGH` -> `ABCD-EFGH`; None when it is not a code."""
    match = CODE_RE.fullmatch(text.strip().upper())
    return f"{match.group(1)}-{match.group(2)}" if match else None


def refusal_text(user_id: int) -> str:
    """What a user who may not chat is told under the allowlist (and once denied)."""
    return (f"Sorry, this bot is private. Your Telegram user id is {user_id}: "
            "ask the operator to add it to ALLOWED_USER_IDS if you should have access.")


@dataclass(frozen=True)
class Stranger:
    """Someone (or a group) asking in: the id decided on, and how the operator sees them."""

    subject_id: int
    kind: str  # "user" | "group"
    name: str
    username: str | None = None
    added_by: str = ""  # a group: who added the bot


def _hhmm(moment: str) -> str:
    return datetime.fromisoformat(moment).strftime("%H:%M UTC")


class Access:
    """The policy, the codes and the decisions; `is_allowed` runs on every turn (one query)."""

    def __init__(self, records: AccessStore, outbox: OutboxStore, settings: Settings, clock: Clock) -> None:
        self.records, self.outbox, self.settings, self.clock = records, outbox, settings, clock

    @property
    def mode(self) -> str:
        return self.settings.access_mode

    def is_operator(self, user_id: int) -> bool:
        return self.settings.operator_chat_id is not None and user_id == self.settings.operator_chat_id

    def preapproved(self, user_id: int) -> bool:
        return self.is_operator(user_id) or user_id in self.settings.allowed_ids

    async def is_allowed(self, user_id: int, chat_id: int | None = None) -> bool:
        """Open, the operator, ALLOWED_USER_IDS, an approved user, or anyone not denied in an approved group."""
        if self.mode == "open" or self.preapproved(user_id):
            return True
        group = chat_id if chat_id is not None and chat_id < 0 else None
        statuses = await self.records.statuses((user_id,) if group is None else (user_id, group))
        if statuses.get(user_id) == "denied":
            return False
        return statuses.get(user_id) == "approved" or (group is not None and statuses.get(group) == "approved")

    # A stranger writes ----------------------------------------------------------------------
    async def answer_stranger(self, *, user_id: int, chat_id: int, chat_type: str, name: str,
                        username: str | None = None, title: str = "", wrote: bool = True) -> str:
        """The one reply to someone who may not chat; under pairing, their code (or their group's request)."""
        if self.mode != "pairing" or (await self.records.statuses((user_id,))).get(user_id) == "denied":
            return refusal_text(user_id)
        if chat_type in ("group", "supergroup"):
            if (await self.records.statuses((chat_id,))).get(chat_id) == "denied":
                return "This group is not approved for this bot."
            await self.request(Stranger(chat_id, "group", title or f"group {chat_id}",
                                  added_by=f"{name} ({user_id})" if user_id else ""))
            return "This group is not approved for this bot yet; the operator has been asked."
        offered = await self.request(Stranger(user_id, "user", name, username))
        if isinstance(offered, str):
            return offered
        resend = " Your message was not sent to the assistant: send it again then." if wrote else ""
        return (f"This bot is private. Your Telegram user id is {user_id} and your pairing code is "
                f"{offered.code} (valid until {_hhmm(offered.expires_at)}). The operator has been asked to let you "
                f"in; you will get a message here when they do.{resend}")

    async def request(self, stranger: Stranger) -> PairingCode | str:
        """The subject's pending code (a new one, and one request to the operator, if none is
        valid), or why there is none (a sentence for them)."""
        now = self.clock.now()
        now_iso = now.isoformat(timespec="milliseconds")
        pending = await self.records.pending_code(stranger.subject_id, now=now_iso)
        if pending is not None:
            return pending
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0).isoformat(timespec="milliseconds")
        if await self.records.codes_since(stranger.subject_id, since=day_start) >= MAX_CODES_PER_DAY:
            return (f"This bot is private. Your Telegram user id is {stranger.subject_id}. You have asked for "
                    f"{MAX_CODES_PER_DAY} pairing codes today: please try again tomorrow.")
        if await self.records.pending_count(now=now_iso) >= MAX_PENDING:
            return (f"This bot is private. Your Telegram user id is {stranger.subject_id}. Too many requests are "
                    "waiting for the operator right now: please try again in an hour.")
        expires = (now + timedelta(seconds=CODE_VALID_S)).isoformat(timespec="milliseconds")
        while True:  # a collision with an old code is possible, if unlikely: draw again
            code = PairingCode(new_code(), stranger.subject_id, stranger.kind, stranger.name[:200],
                               (stranger.username or None), "pending", now_iso, expires)
            if await self.records.add_code(code):
                break
        await self._tell_operator(stranger, code, now_iso)
        return code

    async def _tell_operator(self, stranger: Stranger, code: PairingCode, now_iso: str) -> None:
        operator = self.settings.operator_chat_id
        if operator is None:
            return
        handle = f" @{stranger.username}" if stranger.username else ""
        who = (f"User {stranger.name}{handle} (id {stranger.subject_id}) wants to chat with the bot."
               if stranger.kind == "user" else
               f"The bot was added to the group {stranger.name} (id {stranger.subject_id})"
               f"{' by ' + stranger.added_by if stranger.added_by else ''}.")
        text = (f"Access request\n{who}\ncode: {code.code} (valid until {_hhmm(code.expires_at)})\n"
                f"Approve or Deny below, or /allow {code.code}.")
        await self.outbox.enqueue(kind="alert", chat_id=operator, text=text, trace_id=None,
                            dedupe_key=f"pair:{code.code}", now=now_iso,
                            reply_markup=pairing_keyboard(stranger.subject_id))

    # The operator decides ---------------------------------------------------------------------
    async def decide_pending(self, subject_id: int, *, approve: bool, by: str) -> str:
        """A button press: decide the subject's pending request; a clear sentence either way."""
        now_iso = self.clock.iso()
        pending = await self.records.pending_code(subject_id, now=now_iso)
        if pending is None:
            earlier = await self.records.decision(subject_id)
            if earlier is not None:
                return f"Already {earlier.status} by {earlier.decided_by} at {_hhmm(earlier.decided_at)}."
            return (f"No pending request for {subject_id} (codes last an hour): they get a new code when they "
                    f"write again, or /allow {subject_id}.")
        return await self._decide(pending, approve=approve, by=by, now_iso=now_iso)

    async def _decide(self, code: PairingCode, *, approve: bool, by: str, now_iso: str) -> str:
        status = "approved" if approve else "denied"
        await self.records.decide(subject_id=code.subject_id, kind=code.kind, status=status, name=code.name,
                            username=code.username, decided_by=by, now=now_iso)
        if approve:
            await self.outbox.enqueue(kind="reply", chat_id=code.subject_id, trace_id=None, now=now_iso,
                                text=WELCOME if code.kind == "user" else GROUP_WELCOME,
                                dedupe_key=f"paired:{code.code}")
        what = "User" if code.kind == "user" else "Group"
        return f"{what} {code.name} ({code.subject_id}) {status} by {by} at {_hhmm(now_iso)}."

    async def allow(self, arg: str, *, by: str) -> str:
        """/allow CODE|USER_ID."""
        now_iso = self.clock.iso()
        code = normalize_code(arg)
        if code is not None:
            found = await self.records.code(code)
            if found is None or found.status != "pending" or found.expires_at <= now_iso:
                return f"No pending code {code} (codes last an hour; /users lists the pending ones)."
            return await self._decide(found, approve=True, by=by, now_iso=now_iso)
        subject = _subject(arg)
        if subject is None:
            return "Usage: /allow CODE|USER_ID (a code like ABCD-EFGH, or a Telegram user or group id)."
        pending = await self.records.pending_code(subject, now=now_iso)
        if pending is not None:
            return await self._decide(pending, approve=True, by=by, now_iso=now_iso)
        earlier = await self.records.decision(subject)
        kind = "group" if subject < 0 else "user"
        await self.records.decide(subject_id=subject, kind=kind, status="approved", name=earlier.name if earlier else "",
                            username=earlier.username if earlier else None, decided_by=by, now=now_iso)
        return f"{kind.capitalize()} {subject} approved by {by} at {_hhmm(now_iso)}."

    async def deny(self, arg: str, *, by: str) -> str:
        """/deny USER_ID: revoked at once (the next message is refused)."""
        subject = _subject(arg)
        if subject is None:
            return "Usage: /deny USER_ID (a Telegram user or group id; /users lists them)."
        if self.is_operator(subject):
            return "The operator cannot be denied."
        if subject in self.settings.allowed_ids:
            return f"{subject} is in ALLOWED_USER_IDS, which always lets them in: remove them there."
        now_iso = self.clock.iso()
        earlier = await self.records.decision(subject)
        pending = await self.records.pending_code(subject, now=now_iso)
        source = earlier or pending
        kind = "group" if subject < 0 else "user"
        await self.records.decide(subject_id=subject, kind=kind, status="denied", name=source.name if source else "",
                            username=source.username if source else None, decided_by=by, now=now_iso)
        return f"{kind.capitalize()} {subject} denied by {by} at {_hhmm(now_iso)}: their next message is refused."


def _subject(arg: str) -> int | None:
    text = arg.strip()
    if not text.lstrip("-").isdigit() or len(text) > 20:
        return None
    value = int(text)
    return value if value != 0 and abs(value) < 2**63 else None
