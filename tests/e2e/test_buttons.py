"""Buttons on operator alerts end to end: a dead-lettered turn's alert carries Replay, Discard and
Trace; pressing Replay replays it like /replay ID, the press is acknowledged, the alert is edited
to show the outcome, and a second press says it was already replayed."""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import OPERATOR_ID
from tests.e2e.test_access import button_data, current, press
from tests.fakes.llm_api import Error

pytestmark = pytest.mark.e2e
USER = 100
FAST = {"RETRY_WAIT_SCALE": "0", "DLQ_AUTO_REPLAY": "false"}


def test_a_dead_lettered_turn_is_replayed_by_its_alerts_replay_button(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    question = "what is the capital of Peru?"
    fake_llm.fail_all(Error.server_error())
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, question))
    ref = re.search(r"ref: ([0-9a-f]{8})", fake_telegram.wait_for_text(USER, "ref:", timeout=15).plain_text).group(1)
    alert = fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=15)
    buttons = button_data(alert)
    assert set(buttons) == {"Replay", "Discard", "Trace"}
    entry_id = re.fullmatch(r"dlq:replay:(\d+)", buttons["Replay"]).group(1)
    assert buttons["Trace"] == f"trace:{ref}" and all(len(d.encode()) <= 64 for d in buttons.values())

    nobody = press(fake_telegram, alert, USER, buttons["Replay"])  # not the operator: nothing is replayed
    assert "Only the operator" in nobody["text"] and fake_llm.count() == 2

    fake_llm.clear_failures()
    acknowledged = press(fake_telegram, alert, OPERATOR_ID, buttons["Replay"])
    assert f"Replaying #{entry_id}" in acknowledged["text"]
    late = fake_telegram.wait_for_text(USER, f"echo: {question}", timeout=20)
    assert "Sorry for the delay" in late.plain_text
    edited = fake_telegram.wait_for(lambda: "answer delivered" in (current(fake_telegram, alert).plain_text or "")
                                    and current(fake_telegram, alert), timeout=15)
    assert re.search(rf"Replay by Olga \(900\) at \d\d:\d\d UTC: #{entry_id} replayed", edited.plain_text)
    assert set(button_data(edited)) == {"Trace"}  # Replay and Discard no longer apply
    assert fake_llm.count() == 3

    again = press(fake_telegram, edited, OPERATOR_ID, buttons["Replay"])  # a stale press: idempotent
    assert "not pending (replayed)" in again["text"] and fake_llm.count() == 3
    gone = press(fake_telegram, edited, OPERATOR_ID, "dlq:discard:99999")
    assert "No DLQ entry 99999" in gone["text"]

    traced = press(fake_telegram, edited, OPERATOR_ID, buttons["Trace"])
    assert "trace follows" in traced["text"]
    fake_telegram.wait_for_text(OPERATOR_ID, "turn", timeout=15)  # the span tree, as /trace REF sends it
    status = press(fake_telegram, edited, OPERATOR_ID, "status")  # the circuit alert's button, as /status
    assert "Status follows" in status["text"]
    fake_telegram.wait_for_text(OPERATOR_ID, "Circuit: closed", timeout=15)
    assert len(fake_telegram.callback_answers()) == 6  # every press answered, once
