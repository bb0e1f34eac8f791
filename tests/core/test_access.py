"""Pairing codes and their bounds (core/access.py) on an in-memory database with a settable clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from config.settings import Settings, format_errors
from core.access import ALPHABET, MAX_CODES_PER_DAY, MAX_PENDING, Access, new_code, normalize_code
from core.failures.escalation import Outbox
from core.store import open_sqlite
from core.store.access import AccessRecords

OPERATOR = 900


class SetClock:
    def __init__(self) -> None:
        self.moment = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.moment

    def iso(self) -> str:
        return self.moment.isoformat(timespec="milliseconds")


def access(**settings: object) -> tuple[Access, SetClock, Outbox]:
    db = open_sqlite(":memory:")
    clock, outbox = SetClock(), Outbox(db)
    config = Settings(_env_file=None, **{"operator_chat_id": OPERATOR, "allowed_user_ids": "100", **settings})
    return Access(AccessRecords(db), outbox, config, clock), clock, outbox  # type: ignore[arg-type]


async def offer(gate: Access, user_id: int) -> str:
    return await gate.answer_stranger(user_id=user_id, chat_id=user_id, chat_type="private", name="Eve")


def code_in(text: str) -> str | None:
    found = re.search(r"pairing code is ([A-Z0-9]{4}-[A-Z0-9]{4})", text)
    return found.group(1) if found else None


def test_codes_use_no_look_alikes() -> None:
    assert not set("0O1IL") & set(ALPHABET)
    for _ in range(200):
        code = new_code()
        assert re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}", code) and set(code.replace("-", "")) <= set(ALPHABET)
    assert normalize_code("abcd efgh") is None and normalize_code(" abcdefgh ") == "ABCD-EFGH"
    assert normalize_code("ABCD-EFG0") is None


async def test_the_same_code_within_the_hour_then_a_new_one_and_one_request_per_code() -> None:
    gate, clock, outbox = access()
    first = code_in(await offer(gate, 555))
    clock.moment += timedelta(minutes=59)
    assert code_in(await offer(gate, 555)) == first
    clock.moment += timedelta(minutes=2)
    second = code_in(await offer(gate, 555))
    assert second and second != first
    requests = await outbox.pending_for(OPERATOR)
    assert [first in r.text for r in requests] == [True, False] and second in requests[1].text
    assert all(r.reply_markup and "acc:approve:555" in r.reply_markup for r in requests)


async def test_at_most_five_codes_per_stranger_per_day_and_twenty_pending() -> None:
    gate, clock, _ = access()
    for _ in range(MAX_CODES_PER_DAY):
        assert code_in(await offer(gate, 555))
        clock.moment += timedelta(minutes=61)
    assert "try again tomorrow" in await offer(gate, 555)
    clock.moment = clock.moment.replace(hour=0, minute=5) + timedelta(days=1)
    assert code_in(await offer(gate, 555))
    for user in range(1000, 1000 + MAX_PENDING - 1):
        assert code_in(await offer(gate, user))
    assert "Too many requests are waiting" in await offer(gate, 2000)


async def test_policies_and_what_always_gets_in() -> None:
    gate, _, _ = access(access_policy="allowlist")
    assert await gate.is_allowed(100) and await gate.is_allowed(OPERATOR) and not await gate.is_allowed(555)
    assert "ALLOWED_USER_IDS" in await offer(gate, 555) and code_in(await offer(gate, 555)) is None
    await gate.allow("555", by="op")
    assert await gate.is_allowed(555)
    assert "cannot be denied" in await gate.deny(str(OPERATOR), by="op") and "ALLOWED_USER_IDS" in await gate.deny("100", by="op")
    await gate.deny("555", by="op")
    assert not await gate.is_allowed(555) and await gate.is_allowed(100)
    assert await access(allowed_user_ids="*")[0].is_allowed(555)
    assert await access(access_policy="open")[0].is_allowed(555)


async def test_a_denied_user_is_refused_even_in_an_approved_group() -> None:
    gate, _, _ = access()
    await gate.allow("-7000", by="op")
    assert await gate.is_allowed(555, -7000) and not await gate.is_allowed(555, -7001) and not await gate.is_allowed(555)
    await gate.deny("555", by="op")
    assert not await gate.is_allowed(555, -7000)
    assert code_in(await offer(gate, 555)) is None  # denied: no new code


def test_access_policy_setting_defaults_and_its_one_line_error() -> None:
    assert Settings(_env_file=None).access_mode == "allowlist"
    assert Settings(_env_file=None, operator_chat_id=5).access_mode == "pairing"
    assert Settings(_env_file=None, operator_chat_id=5, allowed_user_ids="*").access_mode == "open"
    assert Settings(_env_file=None, access_policy=" Open ").access_mode == "open"
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, access_policy="pairing")
    [line] = format_errors(raised.value)
    assert line.startswith("ACCESS_POLICY:") and "OPERATOR_CHAT_ID" in line
