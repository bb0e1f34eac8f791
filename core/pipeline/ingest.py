"""ingest: documents and very long texts become artifacts; the prompt gets a reference.
Voice notes, audio files and video notes are stored and transcribed (core/voice.py,
core/transcribe.py): the transcript is the user's message. Videos and GIFs get a notice.

A document is downloaded (refused above Telegram's 20 MB bot download limit), its text is
extracted in a worker thread (plain text, Markdown, code, JSON, CSV; PDF through pypdf, with
a page and a time cap) and stored once by SHA-256. The chat's hot state indexes it, and the
user's turn becomes a short line with the `artifact://` reference and a summary: the agent
reads the content with `read_artifact`. A picture (a photo, or an image sent as a document) is
scaled down and stored as an `image` artifact; the context stage attaches it (core/context/images.py).
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

from opentelemetry import trace

from core.context.extract import MAX_DOCUMENT_BYTES, UnsupportedDocument, extract_text_off_loop
from core.context.images import IMAGE_KIND, UnsupportedImage, marker_line, prepare_image
from core.context.text_artifacts import LONG_TEXT_TOKENS, index_artifact, store_text
from core.contracts import Attachment
from core.ports import DeliveryFailed
from core.transcribe import transcribe_with_retry
from core.turn import Turn, TurnEnded
from core.voice import check_transcription_caps, record_transcription, refusal, store_audio, stored_audio

CANNOT_WATCH = {"video": "a video", "animation": "a GIF"}


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


async def run(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    span = trace.get_current_span()
    parts: list[str] = []
    text = inbound.text.strip()
    if text:
        tokens = services.counter.count(text)
        span.set_attribute("message.tokens", tokens)
        if tokens > LONG_TEXT_TOKENS:
            info = await store_text(turn, text, label="long message", kind="long_message")
            parts.append(f"[The user sent a long text ({tokens} tokens), stored as {info.ref}. "
                         f"Summary: {info.summary} Read it with read_artifact when needed.]")
        else:
            parts.append(text)
    attachment = inbound.attachment
    if attachment is not None and attachment.kind in CANNOT_WATCH:
        await _end_with_notice(turn, f"I can't watch {CANNOT_WATCH[attachment.kind]} yet. Tell me in words (or a "
                                     "voice note) what you would like to know about it.", "video not supported")
    if attachment is not None and attachment.spoken:
        turn.heard = await _transcribe(turn, attachment)
        parts.append(turn.heard)
    elif attachment is not None and attachment.mime_type.startswith("image/"):
        parts.append(await _ingest_image(turn, attachment, captioned=bool(text)))
    elif attachment is not None:
        parts.append(await _ingest_document(turn, attachment))
    turn.user_text = "\n\n".join(parts)


async def _ingest_document(turn: Turn, attachment: Attachment) -> str:
    """The document stored as an artifact; the line the prompt carries instead of its text."""
    data = await _download(turn, attachment)
    try:
        content = await extract_text_off_loop(data, file_name=attachment.file_name, mime_type=attachment.mime_type)
    except UnsupportedDocument as error:
        await _end_with_notice(turn, f"I can't read {attachment.file_name}: {error}", "unsupported document")
    info = await store_text(turn, content, label=attachment.file_name, kind="document")
    trace.get_current_span().set_attributes({"document.bytes": len(data), "document.tokens": info.tokens or 0,
                                             "document.new": info.created})
    return (f"[Document {attachment.file_name} stored as {info.ref} ({info.tokens} tokens). "
            f"Summary: {info.summary} Read it with read_artifact.]")


async def _download(turn: Turn, attachment: Attachment) -> bytes:
    if attachment.size_bytes > MAX_DOCUMENT_BYTES:
        await _end_with_notice(turn, f"That file is {_mb(attachment.size_bytes)}; bots can only download files "
                                     f"up to {_mb(MAX_DOCUMENT_BYTES)}. Please send a smaller file or paste the part "
                                     "that matters.", "document too large")
    try:
        return await turn.channel.download(attachment.file_id, max_bytes=MAX_DOCUMENT_BYTES)
    except DeliveryFailed as failed:
        await _end_with_notice(turn, f"I could not download that file ({failed.reason}). Please send it again.",
                               "download failed")


async def _ingest_image(turn: Turn, attachment: Attachment, *, captioned: bool) -> str:
    """The picture scaled down and stored as an artifact; the marker line the turn carries (the
    context stage attaches the image itself). Without vision the user is told, and a caption is
    still answered."""
    services, inbound = turn.services, turn.inbound
    data = await _download(turn, attachment)
    try:
        prepared = await asyncio.to_thread(prepare_image, data)
    except UnsupportedImage as error:
        await _end_with_notice(turn, f"I can't read {attachment.file_name}: {error}", "unsupported image")
    vision = services.settings.llm_vision
    info = await services.artifacts.put(content=prepared.data, media_type=prepared.media_type, chat_id=inbound.chat_id,
                                  user_id=inbound.user_id, label=attachment.file_name,
                                  summary=inbound.text.strip() or "picture", kind=IMAGE_KIND,
                                  trace_id=inbound.trace_id, now=services.clock.iso())
    if info.linked:  # new to this chat: the hot state lists it, so view_image can find it later
        await index_artifact(turn, info, label=attachment.file_name, kind=IMAGE_KIND)
    trace.get_current_span().set_attributes({
        "image.bytes": len(data), "image.stored_bytes": len(prepared.data), "image.width": prepared.width,
        "image.height": prepared.height, "image.scaled": prepared.scaled, "image.tokens": prepared.tokens,
        "image.vision": vision})
    if not vision:
        notice = (f"The model I use cannot see images; I kept your picture as {info.ref}."
                  + (" Answering your caption:" if captioned else ""))
        if not captioned:
            await _end_with_notice(turn, notice, "no vision")
        await turn.send("notice", notice)
    return marker_line(info, prepared, vision=vision)


async def _transcribe(turn: Turn, attachment: Attachment) -> str:
    """A voice note, audio file or video note's words: checked against the caps before download,
    stored once, transcribed (a replay finds the stored sound: no second download)."""
    services = turn.services
    refused = refusal(attachment, max_seconds=services.settings.voice_max_seconds)
    if refused:
        await _end_with_notice(turn, refused, "voice note too long")
    await check_transcription_caps(turn, attachment)
    data = await stored_audio(turn, attachment)
    span = trace.get_current_span()
    span.set_attributes({"voice.kind": attachment.kind, "voice.duration_s": attachment.duration_s,
                         "voice.stored": data is not None})
    if data is None:
        try:
            data = await turn.channel.download(attachment.file_id, max_bytes=MAX_DOCUMENT_BYTES)
        except DeliveryFailed as failed:
            await _end_with_notice(turn, f"I could not download that recording ({failed.reason}). "
                                         "Please send it again.", "download failed")
        await store_audio(turn, attachment, data)
    assert services.transcriber is not None, "build_services makes the transcriber"
    transcript = await transcribe_with_retry(
        services.transcriber, data, file_name=attachment.file_name, breakers=services.breakers,
        policy=services.retry_policy, secrets=services.settings.secrets(), monotonic=services.clock.monotonic)
    await record_transcription(turn, attachment, transcript)
    if not transcript:
        await _end_with_notice(turn, "I could not make out any words in that recording.", "empty transcript")
    return transcript


async def _end_with_notice(turn: Turn, text: str, why: str) -> NoReturn:
    turn.outcome = "notice"
    await turn.send("notice", text)
    raise TurnEnded(why) from None
