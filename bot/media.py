"""Messages that are not text or documents, put into the inbound contract's terms.

Sound (a voice note, an audio file, a video note) and video (a video, a GIF) become an
`Attachment` of their kind, with the size and duration Telegram declares: core checks the caps
before anything is downloaded. What can be put into words (a location's coordinates, a
contact's name, a sticker's emoji, a dice roll, a poll) becomes the message's text, so that the
model answers it like anything else typed.
"""

from __future__ import annotations

import warnings

from telegram import Message
from telegram.warnings import PTBDeprecationWarning

from core.contracts import Attachment, build

# Telegram field -> (attachment kind, default file name, default mime type).
MEDIA_FIELDS = (
    ("voice", "voice", "voice.ogg", "audio/ogg"),
    ("audio", "audio", "audio.mp3", "audio/mpeg"),
    ("video_note", "video_note", "video_note.mp4", "video/mp4"),
    ("animation", "animation", "animation.mp4", "video/mp4"),  # before `document`: a GIF carries both
    ("video", "video", "video.mp4", "video/mp4"),
)


# Content a person sends that the bot cannot put into words yet (a service message is none of these).
UNREADABLE_FIELDS = ("photo", "game", "story", "paid_media", "invoice", "giveaway", "giveaway_winners", "checklist")
UNREADABLE = "a kind of message the bot cannot read yet"
UNREADABLE_REPLY = "I can't read that kind of message yet. Please tell me in words (or a voice note)."


def is_unreadable(message: Message) -> bool:
    """Content a person sent that has no words the bot can take (a private chat gets a reply)."""
    return any(getattr(message, field, None) for field in UNREADABLE_FIELDS)


def has_media(message: Message) -> bool:
    """Carries sound or video (checked without building anything: routing never raises)."""
    return any(getattr(message, field, None) is not None for field, *_ in MEDIA_FIELDS)


def media_attachment(message: Message) -> Attachment | None:
    """The message's sound or video as an Attachment, or None when it carries neither."""
    for field, kind, default_name, default_mime in MEDIA_FIELDS:
        media = getattr(message, field, None)
        if media is None:
            continue
        name = getattr(media, "file_name", None)
        mime = getattr(media, "mime_type", None)
        with warnings.catch_warnings():  # PTB 22 warns that `duration` becomes a timedelta: both are read
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            duration = getattr(media, "duration", None)
        seconds = int(duration.total_seconds()) if hasattr(duration, "total_seconds") else duration
        return build(Attachment, "inbound_attachment_valid", "channel", file_id=media.file_id,
                     file_name=(name if isinstance(name, str) and name else default_name)[:512],
                     mime_type=(mime if isinstance(mime, str) and mime else default_mime)[:255],
                     size_bytes=max(0, media.file_size or 0), kind=kind,
                     duration_s=max(0, seconds if isinstance(seconds, int) else 0))
    return None


def described_text(message: Message) -> str:
    """A location, contact, sticker, dice or poll in words, or "" when the message is none of them
    (or carries junk: PTB does not check types, and routing must never raise)."""
    try:
        return _described(message)
    except Exception:  # noqa: BLE001 - junk fields describe nothing
        return ""


def _described(message: Message) -> str:
    if message.venue is not None:
        venue = message.venue
        return (f"[The user shared a place: {venue.title}, {venue.address} "
                f"(latitude {venue.location.latitude:.6f}, longitude {venue.location.longitude:.6f}).]")
    if message.location is not None:
        where = message.location
        return f"[The user shared a location: latitude {where.latitude:.6f}, longitude {where.longitude:.6f}.]"
    if message.contact is not None:
        contact = message.contact
        name = " ".join(part for part in (contact.first_name, contact.last_name) if part)
        return f"[The user shared a contact: {name}, phone {contact.phone_number}.]"
    if message.sticker is not None:
        emoji = message.sticker.emoji or "no emoji"
        return f"[The user sent a sticker: {emoji}.]"
    if message.dice is not None:
        return f"[The user rolled a dice {message.dice.emoji}: it shows {message.dice.value}.]"
    if message.poll is not None:
        poll = message.poll
        options = "; ".join(option.text for option in poll.options)
        return f"[The user sent a poll: {poll.question} Options: {options}.]"
    return ""
