"""Hypothesis presses buttons with forged, truncated and stale callback_data, as the operator and as
others, through the real entry point (`process_raw`, a real PTB Bot against the Bot API stand-in):
nothing is approved, denied, discarded or replayed that the operator did not press with exactly the
data a button carries, and every press is answered exactly once."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.channel import inline_keyboard
from core.callbacks import MAX_CALLBACK_BYTES, dlq_keyboard, pairing_keyboard, parse, status_keyboard
from core.contracts import DlqEntry, InboundMessage
from core.replay import ReplayResult, ReplayStatus
from tests.bot.conftest import ALLOWED, OPERATOR, STRANGER, Harness

OTHER_STRANGER = 556
SUBJECTS = (STRANGER, OTHER_STRANGER)
UPDATE_IDS = itertools.count(50_000)


def valid_data(entry_id: int) -> list[str]:
    keyboards = [pairing_keyboard(s) for s in SUBJECTS] + [dlq_keyboard(entry_id, "0123abcd"), status_keyboard()]
    return [b["callback_data"] for k in keyboards for row in k["inline_keyboard"] for b in row]


def forged(entry_id: int) -> st.SearchStrategy[str]:
    real = valid_data(entry_id)
    truncated = st.sampled_from(real).flatmap(lambda d: st.integers(0, len(d) - 1).map(lambda n: d[:n]))
    padded = st.tuples(st.sampled_from(real), st.sampled_from([" ", ":", "0", "\x00", ":1", "é"])).map("".join)
    near = st.tuples(st.sampled_from(["acc:approve:", "acc:deny:", "dlq:replay:", "dlq:discard:", "trace:"]),
                     st.one_of(st.integers(-10**20, 10**20).map(str), st.text(max_size=12))).map("".join)
    return st.one_of(st.sampled_from(real), truncated, padded, near, st.text(max_size=70))


def test_parse_accepts_exactly_what_the_builders_make() -> None:
    for data in valid_data(12):
        assert parse(data) is not None and len(data.encode()) <= MAX_CALLBACK_BYTES
    for junk in ("acc:approve:0", "acc:approve:01", "dlq:replay:-3", "trace:ABCDEF12", "status ", "acc:approve:555 ",
                 "dlq:replay:" + "9" * 30, None, 12, b"status"):
        assert parse(junk) is None, junk


def prepare(harness: Harness) -> tuple[int, int, int]:
    """Two pending pairing requests, one pending DLQ entry, and an operator message with buttons
    (and one in a user's chat) to press on; returns (entry id, operator message id, user message id)."""
    services, loop = harness.services, harness.loop
    for subject in SUBJECTS:
        loop.run_until_complete(services.access.answer_stranger(user_id=subject, chat_id=subject,
                                                                chat_type="private", name="Eve"))
    inbound = InboundMessage(update_id=next(UPDATE_IDS), trace_id=uuid.uuid4().hex, chat_id=ALLOWED, chat_type="private",
                             user_id=ALLOWED, text="a lost question", received_at=datetime.now(UTC))
    entry_id = loop.run_until_complete(services.dlq.add(
        DlqEntry(trace_id=inbound.trace_id, chat_id=ALLOWED, user_id=ALLOWED, inbound=inbound,
                 error_kind="llm_server", error_message="HTTP 500", replayable=True),
        attempts=[], now=services.clock.iso()))
    bot = harness.runtime.bot
    markup = inline_keyboard(dlq_keyboard(entry_id, "0123abcd"))
    on_alert = loop.run_until_complete(bot.send_message(OPERATOR, "an alert", reply_markup=markup))
    on_user = loop.run_until_complete(bot.send_message(ALLOWED, "an answer", reply_markup=markup))
    return entry_id, on_alert.message_id, on_user.message_id


# The harness (a bot, the stand-in, storage) is shared by the examples: each example reads the
# state it starts from, so the reference model stays exact. No shrinking: a failure prints its presses.
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.data())
def test_forged_truncated_and_stale_presses_change_nothing_the_operator_did_not_press(
        harness: Harness, data: st.DataObject) -> None:
    services, loop, fake = harness.services, harness.loop, harness.fake
    entry_id, alert_id, user_message_id = prepare(harness)
    replayed: list[int] = []

    async def record_replay(dlq_id: int) -> ReplayResult:
        replayed.append(dlq_id)
        return ReplayResult(dlq_id, ReplayStatus.failed_again, trace_id="cd" * 16, outcome="failed")

    harness.runtime.router.buttons.replay = record_replay
    records = services.access.records
    pending = {c.subject_id for c in loop.run_until_complete(records.pending_codes(now=services.clock.iso()))}
    status = loop.run_until_complete(records.statuses(SUBJECTS))
    answers_before = len(fake.callback_answers())
    expected_replays, discarded = [], False
    presses = data.draw(st.lists(st.tuples(st.sampled_from([OPERATOR, OPERATOR, STRANGER, ALLOWED]),
                                           st.sampled_from(["alert", "alert", "user"]), forged(entry_id)),
                                 min_size=20, max_size=40))
    for user, where, callback_data in presses:
        chat, message_id = (OPERATOR, alert_id) if where == "alert" else (ALLOWED, user_message_id)
        update = fake.callback_update(chat, message_id, user, callback_data, update_id=next(UPDATE_IDS))
        loop.run_until_complete(harness.runtime.process_raw(update))
        if user != OPERATOR or chat != OPERATOR:
            continue  # the reference model: only the operator's presses in their chat act
        press = parse(callback_data)
        if press is None:
            continue
        if press.action in ("approve", "deny") and press.number in pending:
            pending.discard(press.number)
            status[press.number] = "approved" if press.action == "approve" else "denied"
        elif press.action == "replay" and press.number == entry_id:
            expected_replays.append(entry_id)
        elif press.action == "discard" and press.number == entry_id:
            discarded = True
    assert replayed == expected_replays
    assert loop.run_until_complete(records.statuses(SUBJECTS)) == status
    assert {c.subject_id for c in loop.run_until_complete(records.pending_codes(now=services.clock.iso()))} == pending
    entry = loop.run_until_complete(services.dlq.get(entry_id))
    assert entry is not None and entry.status == ("discarded" if discarded else "pending")
    assert len(fake.callback_answers()) - answers_before == len(presses)  # every press answered, once each
