"""Telegram errors as the failure taxonomy sees them (bot/channel.py's `to_delivery_failed`)."""

from __future__ import annotations

import pytest
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from bot.channel import to_delivery_failed


@pytest.mark.parametrize(("error", "permanent", "chat_gone", "retry_after_s"), [
    (Forbidden("Forbidden: bot was blocked by the user"), True, True, None),
    (BadRequest("Bad Request: chat not found"), True, True, None),
    (BadRequest("Bad Request: message text is empty"), True, False, None),
    (RetryAfter(3), False, False, 3.0),
    (NetworkError("Bad Gateway"), False, False, None),
])
def test_to_delivery_failed(error, permanent: bool, chat_gone: bool, retry_after_s: float | None) -> None:
    failed = to_delivery_failed(error)
    assert (failed.permanent, failed.chat_gone, failed.retry_after_s) == (permanent, chat_gone, retry_after_s)
