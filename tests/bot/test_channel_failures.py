"""Telegram failures as the channel sees them: the error taxonomy, and delivered-or-not when the
Bot API answers 2xx with a body PTB cannot read (then the message WAS delivered: raising
DeliveryFailed would keep it for a second delivery) or does not answer at all (not delivered)."""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

import bot.channel as channel_module
from bot.channel import TelegramChannel, answered_unreadably, retry_after_s, to_delivery_failed
from core.contracts import ReplyEvent
from core.ports import DeliveryFailed
from tests.bot.conftest import CHAT, ptb_bot

TRACE = "ab" * 16


def event(kind: str, text: str = "") -> ReplyEvent:
    return ReplyEvent(kind=kind, trace_id=TRACE, chat_id=CHAT, text=text)


@pytest.mark.parametrize(("error", "permanent", "chat_gone", "retry_after_s"), [
    (Forbidden("Forbidden: bot was blocked by the user"), True, True, None),
    (BadRequest("Bad Request: chat not found"), True, True, None),
    (BadRequest("Bad Request: message text is empty"), True, False, None),
    (RetryAfter(3), False, False, 3.0),
    (RetryAfter(timedelta(seconds=2.5)), False, False, 2.5),
    (NetworkError("Bad Gateway"), False, False, None),
])
def test_to_delivery_failed(error, permanent: bool, chat_gone: bool, retry_after_s: float | None) -> None:
    failed = to_delivery_failed(error)
    assert (failed.permanent, failed.chat_gone, failed.retry_after_s) == (permanent, chat_gone, retry_after_s)


@pytest.mark.parametrize("ptb_timedelta", ["true", "false"])
def test_retry_after_reads_the_public_value_in_both_forms(monkeypatch, ptb_timedelta: str) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", ptb_timedelta)  # timedelta when "true", else a number
    error = RetryAfter(timedelta(seconds=7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PTB's deprecation warning stays out of our logs
        assert retry_after_s(error) == 7.0


def test_channel_uses_no_private_attribute_of_ptb() -> None:
    source = Path(channel_module.__file__).read_text()
    assert "._retry_after" not in source and "_retry_after\"" not in source


@pytest.mark.parametrize(("error", "answered"), [
    (TelegramError("Invalid server response"), True),  # a 2xx whose body is not JSON
    (KeyError("date"), True),  # a Message without a required field
    (TypeError("Chat() argument after ** must be a mapping, not int"), True),
    (NetworkError("httpx.ConnectError: connection refused"), False),
    (BadRequest("Bad Request: message is too long"), False),
    (TelegramError("something else"), False),
    (RuntimeError("a bug of ours"), False),
])
def test_answered_unreadably(error: Exception, answered: bool) -> None:
    assert answered_unreadably(error) is answered


@pytest.mark.parametrize("garble", [{"drop": ("date",)}, {"drop": ("message_id",)}, {"body": "<html>ok</html>"},
                                    {"body": '{"ok": true}'}])
async def test_final_answer_with_an_unreadable_answer_is_delivered_once(channel, fake_telegram, garble) -> None:
    fake_telegram.garble("sendMessage", **garble)
    await channel.deliver(event("final", "The **answer**"))  # no DeliveryFailed: it was delivered
    [message] = fake_telegram.messages(CHAT)
    assert (message.text, message.parse_mode) == ("The <b>answer</b>", "HTML")


async def test_plain_fallback_with_an_unreadable_answer_is_delivered_once(channel, fake_telegram) -> None:
    fake_telegram.reject_html()
    fake_telegram.garble("sendMessage", drop=("chat", "date"))
    await channel.deliver(event("final", "The **answer**"))
    assert fake_telegram.sent_texts(CHAT) == ["The **answer**"]


async def test_final_edit_of_the_draft_with_an_unreadable_answer(channel, fake_telegram, monkeypatch) -> None:
    monkeypatch.setattr(channel_module, "FIRST_DRAFT_S", 0.0)  # the first draft at once
    await channel.deliver(event("draft", "The **ans"))
    await draft_task(channel)
    fake_telegram.garble("editMessageText", drop=("date",))
    await channel.deliver(event("final", "The **answer**"))
    [message] = fake_telegram.messages(CHAT)
    assert message.texts == ["The **ans", "The <b>answer</b>"]


async def test_a_draft_with_an_unreadable_answer_stops_drafting(channel, fake_telegram, monkeypatch) -> None:
    monkeypatch.setattr(channel_module, "FIRST_DRAFT_S", 0.0)
    monkeypatch.setattr(channel_module, "EDIT_INTERVAL_S", 0.0)
    fake_telegram.garble("sendMessage", drop=("date",))
    await channel.deliver(event("draft", "The first words"))
    task = await draft_task(channel)
    assert task.exception() is None  # nothing left for "Task exception was never retrieved"
    await channel.deliver(event("draft", "The first words and more"))  # its id is unknown: no second draft
    assert len(fake_telegram.calls("sendMessage")) == 1
    await channel.deliver(event("final", "The first words and more."))
    assert fake_telegram.sent_texts(CHAT) == ["The first words", "The first words and more."]


async def test_every_exception_in_the_draft_task_is_handled_and_logged_once(monkeypatch, caplog) -> None:
    class BrokenBot:
        async def send_message(self, *_args, **_kwargs):
            raise RuntimeError("a bug in a client library")

    monkeypatch.setattr(channel_module, "FIRST_DRAFT_S", 0.0)
    channel = TelegramChannel(BrokenBot())  # type: ignore[arg-type]
    with caplog.at_level(logging.DEBUG, logger="bot.channel"):
        await channel.deliver(event("draft", "Some text"))
        task = await draft_task(channel)
    assert task.exception() is None
    assert [r.getMessage() for r in caplog.records] == ["draft not shown"]
    assert "a bug in a client library" in caplog.text  # with its traceback


async def test_no_answer_at_all_is_not_delivered() -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused, no answer
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = ptb_bot(f"http://127.0.0.1:{port}")
    channel = TelegramChannel(bot)
    with pytest.raises(DeliveryFailed) as failed:
        await channel.deliver(event("final", "hello"))
    assert not failed.value.permanent


async def draft_task(channel: TelegramChannel) -> asyncio.Task:
    """The turn's draft task, once it has finished."""
    draft = channel._drafts[(CHAT, TRACE)]  # noqa: SLF001 - the task is the thing under test
    assert draft.task is not None
    await asyncio.wait([draft.task])
    return draft.task
