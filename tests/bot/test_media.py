"""Messages that are not text: sound and video become attachments of their kind (with the
declared duration), and what can be put into words becomes the message's text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from telegram import Update

from bot.handlers import route, to_inbound
from core.contracts import Attachment
from core.voice import heard_line, refusal

USER = 7
POLL = {"id": "p1", "question": "Lunch?", "total_voter_count": 0, "is_closed": False, "is_anonymous": True,
        "type": "regular", "allows_multiple_answers": False, "allows_revoting": False, "members_only": False,
        "options": [{"text": "yes", "voter_count": 0, "persistent_id": "o1"},
                    {"text": "no", "voter_count": 0, "persistent_id": "o2"}]}


def update(**fields: Any) -> Update:
    message = {"message_id": 1, "date": 0, "chat": {"id": USER, "type": "private", "first_name": "Ann"},
               "from": {"id": USER, "is_bot": False, "first_name": "Ann"}, **fields}
    return Update.de_json({"update_id": 1, "message": message}, None)


def inbound(up: Update):  # noqa: ANN201
    return to_inbound(up, trace_id="0" * 31 + "1", bot_username="gateway_bot", received_at=datetime.now(UTC))


@pytest.mark.parametrize(("fields", "expected"), [
    ({"location": {"latitude": 1.5, "longitude": -2.25}}, "latitude 1.500000, longitude -2.250000"),
    ({"contact": {"phone_number": "+15550100", "first_name": "Bea", "last_name": "Lu"}},
     "a contact: Bea Lu, phone +15550100"),
    ({"dice": {"emoji": "🎲", "value": 5}}, "a dice 🎲: it shows 5"),
    ({"poll": POLL}, "a poll: Lunch? Options: yes; no"),
    ({"sticker": {"file_id": "s", "file_unique_id": "u", "type": "regular", "width": 1, "height": 1,
                  "is_animated": False, "is_video": False, "emoji": "🐱"}}, "a sticker: 🐱"),
])
def test_what_can_be_put_into_words_is_the_text(fields: dict[str, Any], expected: str) -> None:
    up = update(**fields)
    assert route(up, bot_id=1, bot_username="gateway_bot").kind == "message"
    message = inbound(up)
    assert expected in message.text and message.attachment is None and not message.spoken


@pytest.mark.parametrize(("field", "payload", "kind", "spoken"), [
    ("voice", {"duration": 12, "mime_type": "audio/ogg"}, "voice", True),
    ("audio", {"duration": 200, "file_name": "talk.mp3"}, "audio", True),
    ("video_note", {"duration": 30, "length": 240}, "video_note", True),
    ("video", {"duration": 9, "width": 1, "height": 1}, "video", False),
])
def test_sound_and_video_are_attachments_with_their_duration(field: str, payload: dict[str, Any], kind: str,
                                                             spoken: bool) -> None:
    up = update(**{field: {"file_id": "F1", "file_unique_id": "U1", "file_size": 1234, **payload}})
    assert route(up, bot_id=1, bot_username="gateway_bot").kind == "document"
    message = inbound(up)
    assert message.attachment is not None
    assert (message.attachment.kind, message.attachment.duration_s) == (kind, payload["duration"])
    assert message.attachment.size_bytes == 1234 and message.spoken is spoken


def test_a_gif_is_an_animation_not_a_document() -> None:
    gif = {"file_id": "G", "file_unique_id": "g", "width": 1, "height": 1, "duration": 2, "file_name": "a.gif.mp4"}
    message = inbound(update(animation=gif, document={"file_id": "G", "file_unique_id": "g", "file_name": "a.gif.mp4"}))
    assert message.attachment is not None and message.attachment.kind == "animation"


def test_caps_refuse_long_or_large_sound_before_download() -> None:
    assert refusal(Attachment(file_id="f", kind="voice", duration_s=600), max_seconds=600) == ""
    assert "10:01 long" in refusal(Attachment(file_id="f", kind="voice", duration_s=601), max_seconds=600)
    assert "MB" in refusal(Attachment(file_id="f", kind="audio", size_bytes=21 * 1024 * 1024), max_seconds=600)


def test_the_heard_line_is_short() -> None:
    assert heard_line("hi") == "🎤 “hi”"
    assert len(heard_line("word " * 200)) < 210


def test_junk_in_a_location_is_not_a_crash() -> None:
    up = update(location={"latitude": "north", "longitude": 2.0})
    assert route(up, bot_id=1, bot_username="gateway_bot").kind == "ignored"
