"""Voice notes, audio files and video notes: caps, the stored sound, and its transcript.

The ingest stage checks the declared size and duration first (`refusal`), so nothing too long
is downloaded; then `stored_audio` finds the sound this chat already stored for the same
Telegram file (a DLQ replay transcribes it again without a second download), and `store_audio`
keeps a new one as an artifact by SHA-256. `heard_line` is the quoted line an answer starts with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.context.artifacts import ArtifactCorrupt, ArtifactRefError
from core.context.extract import MAX_DOCUMENT_BYTES
from core.contracts import Attachment
from core.failures.taxonomy import Kind
from core.turn import NoticeError
from core.usage import utc_day, utc_month
from core.usage_audio import transcription_cost_usd, transcription_record
from core.usage_caps import check_caps
from core.usage_text import format_refusal

if TYPE_CHECKING:
    from core.turn import Turn

HEARD_MAX_CHARS = 200
SPOKEN_TOKENS_PER_SECOND = 4  # fast speech is ~3 words a second: a generous estimate of the transcript
WHAT = {"voice": "voice note", "audio": "audio file", "video_note": "video note"}


def _minutes(seconds: int) -> str:
    return f"{seconds // 60}:{seconds % 60:02d}"


def refusal(attachment: Attachment, *, max_seconds: int) -> str:
    """Why this sound is refused before download ("" when it may be fetched)."""
    what = WHAT.get(attachment.kind, "recording")
    if attachment.duration_s > max_seconds:
        return (f"That {what} is {_minutes(attachment.duration_s)} long; I transcribe up to "
                f"{_minutes(max_seconds)}. Please send a shorter one, or type the part that matters.")
    if attachment.size_bytes > MAX_DOCUMENT_BYTES:
        return (f"That {what} is {attachment.size_bytes / (1024 * 1024):.1f} MB; bots can only download files up "
                f"to {MAX_DOCUMENT_BYTES / (1024 * 1024):.1f} MB. Please send a shorter one.")
    return ""


def _label(attachment: Attachment) -> str:
    return f"{attachment.kind} {attachment.file_id}"


async def stored_audio(turn: Turn, attachment: Attachment) -> bytes | None:
    """The sound this chat already stored for this Telegram file, or None."""
    artifacts = turn.services.artifacts
    info = await artifacts.find_linked(turn.inbound.chat_id, "voice", _label(attachment))
    if info is None:
        return None
    try:
        return await artifacts.read_bytes(info)
    except (ArtifactRefError, ArtifactCorrupt):
        return None  # gone or damaged: download it again


async def store_audio(turn: Turn, attachment: Attachment, data: bytes) -> str:
    """Keep the sound as an artifact of this chat (once, by SHA-256); returns its ref."""
    services, inbound = turn.services, turn.inbound
    info = await services.artifacts.put(content=data, media_type=attachment.mime_type or "application/octet-stream",
                                  chat_id=inbound.chat_id, user_id=inbound.user_id, label=_label(attachment),
                                  summary=f"{WHAT.get(attachment.kind, 'recording')}, {attachment.duration_s} s",
                                  kind="voice", trace_id=inbound.trace_id, now=services.clock.iso())
    return info.ref


async def record_transcription(turn: Turn, attachment: Attachment, transcript: str) -> None:
    """The transcription's usage row: priced per minute, the transcript's tokens on the user's budget."""
    services, inbound = turn.services, turn.inbound
    assert services.transcriber is not None
    await services.ledger.record(transcription_record(
        at=services.clock.now(), trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id,
        model=services.transcriber.model, seconds=attachment.duration_s,
        transcript_tokens=services.counter.count(transcript)))


async def check_transcription_caps(turn: Turn, attachment: Attachment) -> None:
    """Refuse before the sound is sent when its transcription could cross a spend cap (the budget
    stage runs later, for the chat call: the transcription must not be paid for first)."""
    services, settings, inbound = turn.services, turn.services.settings, turn.inbound
    assert services.transcriber is not None
    now = services.clock.now()
    seconds = max(attachment.duration_s, 1)
    decision = check_caps(
        is_operator=services.is_operator_user(inbound.user_id),
        estimated_tokens=seconds * SPOKEN_TOKENS_PER_SECOND,
        estimated_cost_usd=transcription_cost_usd(services.transcriber.model, seconds),
        user_tokens_today=await services.ledger.user_day_tokens(inbound.user_id, utc_day(now)),
        user_daily_token_cap=settings.user_daily_token_budget,
        month_cost_usd=await services.ledger.month_cost_usd(utc_month(now)), monthly_cap_usd=settings.monthly_budget_usd)
    if not decision.allowed:
        turn.outcome = "notice"
        raise NoticeError(Kind.budget_exhausted, format_refusal(decision, now=now), detail=f"cap {decision.cap}")


def heard_line(transcript: str) -> str:
    """The short quoted line an answer to a voice note starts with."""
    shown = transcript if len(transcript) <= HEARD_MAX_CHARS else transcript[:HEARD_MAX_CHARS - 1].rstrip() + "…"
    return f"🎤 “{shown}”"
