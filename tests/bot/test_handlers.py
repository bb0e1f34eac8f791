"""Routing of group messages: the bot answers in a group only when addressed by a mention
entity of its exact username (or a text_mention of its user id), or by a reply to it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from telegram import Update

from bot.handlers import route, strip_mention, to_inbound

BOT_ID, BOT = 4242, "gateway_bot"
GROUP, USER = -100, 7


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def mention(text: str, handle: str) -> dict[str, Any]:
    """A `mention` entity over `handle` as Telegram sends it (offsets in UTF-16 code units)."""
    start = text.index(handle)
    return {"type": "mention", "offset": utf16(text[:start]), "length": utf16(handle)}


def group_update(text: str, entities: list[dict[str, Any]], *, caption: bool = False) -> Update:
    message: dict[str, Any] = {"message_id": 1, "date": 0, "chat": {"id": GROUP, "type": "supergroup", "title": "g"},
                               "from": {"id": USER, "is_bot": False, "first_name": "Ann"}}
    if caption:
        message |= {"caption": text, "caption_entities": entities,
                    "document": {"file_id": "f", "file_unique_id": "u", "file_name": "a.txt"}}
    else:
        message |= {"text": text, "entities": entities}
    return Update.de_json({"update_id": 1, "message": message}, None)


def kind(update: Update) -> str:
    return route(update, bot_id=BOT_ID, bot_username=BOT).kind


def test_a_look_alike_username_does_not_wake_the_bot() -> None:
    text = "@gateway_bot_two hello"
    assert kind(group_update(text, [mention(text, "@gateway_bot_two")])) == "ignored"
    text = "ask @gateway_botany about it"
    assert kind(group_update(text, [mention(text, "@gateway_botany")])) == "ignored"


def test_its_own_username_in_any_case_does() -> None:
    text = "@Gateway_BOT hello"
    assert kind(group_update(text, [mention(text, "@Gateway_BOT")])) == "message"


def test_an_emoji_before_the_mention_keeps_the_offsets_right() -> None:
    # "👩‍💻" is 5 UTF-16 code units but 3 code points: offsets counted in code points would cut
    # "@gateway_bot" at the wrong place and miss it.
    text = "👩\u200d💻 🎉 @gateway_bot what now?"
    entities = [mention(text, "@gateway_bot")]
    assert entities[0]["offset"] != text.index("@gateway_bot")
    assert kind(group_update(text, entities)) == "message"
    other = "👩\u200d💻 🎉 @gateway_bot_two what now?"
    assert kind(group_update(other, [mention(other, "@gateway_bot_two")])) == "ignored"


def test_a_text_mention_of_the_bot_counts_and_of_someone_else_does_not() -> None:
    text = "Gateway, summarise this"
    to_bot = {"type": "text_mention", "offset": 0, "length": 7, "user": {"id": BOT_ID, "is_bot": True, "first_name": "G"}}
    assert kind(group_update(text, [to_bot])) == "message"
    to_other = {**to_bot, "user": {"id": 99, "is_bot": False, "first_name": "Bob"}}
    assert kind(group_update(text, [to_other])) == "ignored"


def test_the_handle_in_the_text_without_an_entity_is_not_a_mention() -> None:
    # e.g. inside a code span: Telegram marks no mention there, and neither do we.
    assert kind(group_update("type `@gateway_bot` to call it", [])) == "ignored"


def test_a_caption_mention_counts() -> None:
    text = "📎 @gateway_bot read this"
    assert kind(group_update(text, [mention(text, "@gateway_bot")], caption=True)) == "document"


def test_junk_entities_address_nobody_and_do_not_raise() -> None:
    update = group_update("@gateway_bot hi", [{"type": "mention", "offset": "x", "length": None}])
    assert kind(update) in ("ignored", "message")


def test_strip_mention_removes_the_bot_handle_only() -> None:
    assert strip_mention("@gateway_bot_two and @gateway_bot hi", BOT) == "@gateway_bot_two and  hi"
    assert strip_mention("@GATEWAY_BOT hi", BOT) == "hi"
    assert strip_mention("@gateway_bot_two hi", BOT) == "@gateway_bot_two hi"
    text = "😀 @gateway_bot hi"
    inbound = to_inbound(group_update(text, [mention(text, "@gateway_bot")]), trace_id="a" * 32,
                         bot_username=BOT, received_at=datetime.now(UTC))
    assert inbound.text == "😀  hi"
