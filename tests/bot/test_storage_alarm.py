"""The storage alarm on its own: no disk fills up here. Free space and the probe's write are
injected, the clock is a counter, and what would be sent is collected."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

import bot.storage_alarm as storage_alarm
from bot.handlers import BotIdentity
from bot.storage_alarm import MIN_FREE_BYTES, REMEMBERED_UPDATES, StorageAlarm
from config.settings import Settings

OPERATOR, ALLOWED, STRANGER, GROUP = 900, 100, 555, -5000
TOKEN = "123456789:AAE-alarm-SECRET-token_abcdefghijklmnop"
FULL = sqlite3.OperationalError("database or disk is full")


@dataclass
class ManualClock:
    now_s: float = 1000.0

    def monotonic(self) -> float:
        return self.now_s


@dataclass
class FakeServices:
    """The part of `Services` the alarm uses."""

    settings: Settings
    clock: ManualClock = field(default_factory=ManualClock)

    async def is_allowed(self, user_id: int) -> bool:
        return user_id in self.settings.allowed_ids or user_id == self.settings.operator_chat_id


@dataclass
class Rig:
    alarm: StorageAlarm
    services: FakeServices
    sent: list[tuple[int, str]]
    disk: dict[str, Any]

    def to(self, chat_id: int) -> list[str]:
        return [text for chat, text in self.sent if chat == chat_id]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    settings = Settings(_env_file=None, data_dir=tmp_path, operator_chat_id=OPERATOR, allowed_user_ids=str(ALLOWED),
                        escalation_cooldown_seconds=300, telegram_bot_token=TOKEN)
    services = FakeServices(settings)
    sent: list[tuple[int, str]] = []
    disk: dict[str, Any] = {"free": 10 * MIN_FREE_BYTES, "write_error": None, "writes": 0}

    async def write_probe() -> None:
        disk["writes"] += 1
        if disk["write_error"] is not None:
            raise disk["write_error"]

    alarm = StorageAlarm(services, send=lambda chat, text: sent.append((chat, text)),  # type: ignore[arg-type]
                         identity=BotIdentity(4242, "gateway_bot"), free_bytes=lambda _path: disk["free"],
                         write_probe=write_probe)
    return Rig(alarm, services, sent, disk)


def message(update_id: int, user_id: int, text: str = "hello", *, chat_id: int | None = None) -> Update:
    chat_id = user_id if chat_id is None else chat_id
    chat = {"id": chat_id, "type": "private" if chat_id > 0 else "group", "title": "g", "first_name": "A"}
    return Update.de_json({"update_id": update_id, "message": {
        "message_id": update_id, "date": 0, "chat": chat, "text": text,
        "from": {"id": user_id, "is_bot": False, "first_name": "A"}}}, None)


def test_the_operator_is_alerted_once_per_cooldown_and_each_update_is_noted_once(rig: Rig) -> None:
    assert rig.alarm.note(1, "database or disk is full") is True
    assert rig.alarm.note(1, "database or disk is full") is False  # the sender was told already
    assert rig.alarm.note(2, "database or disk is full") is True
    alerts = rig.to(OPERATOR)
    assert len(alerts) == 1 and "refuses writes (database or disk is full)" in alerts[0]
    assert rig.alarm.failing
    rig.services.clock.now_s += 299
    rig.alarm.note(3, "database or disk is full")
    assert len(rig.to(OPERATOR)) == 1
    rig.services.clock.now_s += 1  # the cooldown has passed: one more reminder
    rig.alarm.note(4, "database or disk is full")
    assert len(rig.to(OPERATOR)) == 2


def test_the_alert_never_carries_the_token(rig: Rig) -> None:
    rig.alarm.note(1, f"disk I/O error at https://api.telegram.org/bot{TOKEN}/sendMessage")
    [alert] = rig.to(OPERATOR)
    assert TOKEN not in alert and TOKEN.split(":")[1] not in alert and "disk I/O error" in alert


def test_remembered_updates_are_bounded(rig: Rig) -> None:
    for update_id in range(REMEMBERED_UPDATES + 5):
        rig.alarm.note(update_id, "full")
    assert len(rig.alarm.noted) == REMEMBERED_UPDATES
    assert rig.alarm.note(0, "full") is True  # the oldest were forgotten first
    assert rig.alarm.note(REMEMBERED_UPDATES + 4, "full") is False


async def test_only_an_allowed_sender_addressing_the_bot_is_told(rig: Rig) -> None:
    await rig.alarm.failed(message(1, ALLOWED), FULL)
    await rig.alarm.failed(message(1, ALLOWED), FULL)  # Telegram redelivers the same update: told once
    await rig.alarm.failed(message(2, STRANGER), FULL)  # the bot would not answer them either
    await rig.alarm.failed(message(3, ALLOWED, "just chatting", chat_id=GROUP), FULL)  # not addressed to the bot
    assert len(rig.to(ALLOWED)) == 1 and "Yours is kept" in rig.to(ALLOWED)[0]
    assert rig.to(STRANGER) == [] and rig.to(GROUP) == []


async def test_probe_does_nothing_while_storage_works(rig: Rig) -> None:
    assert await rig.alarm.probe() is True
    assert rig.disk["writes"] == 0 and rig.sent == []


async def test_probe_needs_free_space_and_a_write_before_recovering(rig: Rig) -> None:
    resumed: list[int] = []
    async def resume() -> int:
        resumed.append(1)
        return 3

    rig.alarm.resume = resume
    await rig.alarm.failed(message(1, ALLOWED), FULL)
    rig.disk["free"] = MIN_FREE_BYTES - 1  # SQLite may still commit into its WAL: not proof enough
    assert await rig.alarm.probe() is False and rig.disk["writes"] == 0
    rig.disk["free"], rig.disk["write_error"] = 10 * MIN_FREE_BYTES, FULL
    assert await rig.alarm.probe() is False and rig.disk["writes"] == 1
    assert rig.alarm.failing and resumed == []
    rig.disk["write_error"] = None
    rig.services.clock.now_s += 42
    assert await rig.alarm.probe() is True
    assert not rig.alarm.failing and resumed == [1]
    assert "writes work again after 42 s" in rig.to(OPERATOR)[-1]


async def test_probe_lets_an_error_that_is_not_about_storage_through(rig: Rig) -> None:
    rig.alarm.note(1, "full")
    rig.disk["write_error"] = sqlite3.ProgrammingError("Cannot operate on a closed database.")
    with pytest.raises(sqlite3.ProgrammingError):
        await rig.alarm.probe()


async def test_recovery_tells_the_operator_only_if_they_were_alerted(rig: Rig) -> None:
    rig.alarm.note(1, "full")
    await rig.alarm.recovered()
    assert len(rig.to(OPERATOR)) == 2  # the alert and the all-clear
    rig.services.clock.now_s += 10  # within the cooldown: the next failure is not announced ...
    rig.alarm.note(2, "full")
    await rig.alarm.recovered()
    assert len(rig.to(OPERATOR)) == 2  # ... so neither is its end: a flapping disk stays quiet


def test_the_default_checks_read_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Path] = []

    class Usage:
        free = 123

    monkeypatch.setattr(storage_alarm.shutil, "disk_usage", lambda path: seen.append(path) or Usage)
    assert storage_alarm.free_bytes(tmp_path) == 123 and seen == [tmp_path]
