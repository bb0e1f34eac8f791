"""Property: whatever JSON reaches the Telegram layer's entry point, it never raises out of it,
and every update it accepts ends in exactly one way: a reply, an error reply with a ref, a DLQ
entry, or ignored on purpose with the journal saying why.

In process: the real Runtime (journal, routing, pipeline, Telegram channel) with a scripted LLM,
and a real `telegram.Bot` talking to the FakeTelegram stand-in over 127.0.0.1.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.contracts import ContractViolation
from tests.bot.conftest import ALLOWED, GROUP, OPERATOR, STRANGER, Harness

FINAL_STATES = {"replied", "failed", "ignored"}
TURN_OUTCOMES = {"replied", "failed", "dlq", "refused", "notice"}
KNOWN_OUTCOMES = TURN_OUTCOMES | {"rejected", "malformed", "ignored", "duplicate", "throttled", "error"}
BROKEN = ContractViolation("llm_response_has_choices", field="choices", producer="llm", detail="none")

# Strategies ------------------------------------------------------------------------------------

ODD = ["\u202e", "\u200d", "\ufeff", "\x00", "\ud800", "\udfff", "e\u0301", "👩\u200d💻", "\U0010ffff", "\u2028"]
odd_text = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(ODD)), max_size=6).map("".join)
COMMANDS = ["/start", "/help", "/state", "/new", "/remember likes tea", "/forget 1", "/status", "/nope",
            "/start@other_bot", "/", "/dlq"]
texts = st.one_of(
    st.sampled_from(["hello", "what is 2+2?", "ref: 1234", "@gateway_test_bot hi", "   ", ""]),
    st.sampled_from(COMMANDS),
    odd_text.map(lambda text: f"hi {text}"),
    odd_text,
    st.builds(lambda n, c: c * n, st.integers(4000, 5000), st.sampled_from(["a", "é", "😀 "])),
    st.just("x" * 200_500),  # over the inbound contract's cap
)
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
bad_ids = st.one_of(junk, st.sampled_from([2**64, -(2**63) - 1, True, False, "100", 1.0]))
good_users = st.sampled_from([ALLOWED, ALLOWED, ALLOWED, 101, STRANGER, OPERATOR])


def drop_none(value: dict[str, Any]) -> dict[str, Any]:
    return {key: item for key, item in value.items() if item is not None}


def chance(draw: st.DrawFn, percent: int) -> bool:
    """True `percent` of the time; False for Hypothesis' simplest draw (0), so shrinking heads to normal."""
    return draw(st.integers(0, 99)) >= 100 - percent


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message that is well formed most of the time; otherwise fields are missing or junk."""
    broken = chance(draw, 40)

    def field(strategy: st.SearchStrategy) -> Any:
        if not broken or chance(draw, 70):
            return draw(strategy)
        return draw(st.one_of(st.none(), junk))  # missing or junk

    chat_type = field(st.sampled_from(["private", "private", "private", "group", "supergroup", "channel"]))
    user_id = field(good_users) if not chance(draw, 10) else draw(bad_ids)
    chat_id = GROUP if chat_type in ("group", "supergroup") else user_id
    user = drop_none({"id": user_id, "is_bot": field(st.just(False)) if not chance(draw, 10) else True,
                      "first_name": field(odd_text), "username": field(st.none() | odd_text)})
    fields = {
        "message_id": field(st.integers(1, 10**6)),
        "date": field(st.integers(1_600_000_000, 1_900_000_000)),
        "chat": field(st.just(drop_none({"id": chat_id, "type": chat_type}))),
        "from": field(st.just(user)),
        "text": field(texts),
    }
    extras = draw(st.lists(st.sampled_from([
        ("caption", texts), ("sticker", st.just({"file_id": "s1", "file_unique_id": "u", "type": "regular",
                                                 "width": 1, "height": 1, "is_animated": False,
                                                 "is_video": False})),
        ("document", st.fixed_dictionaries({"file_id": st.text(min_size=1, max_size=8), "file_unique_id": st.just("u")},
                                           optional={"file_name": odd_text | junk, "file_size": junk})),
        ("poll", junk), ("reply_to_message", junk), ("entities", junk), ("photo", junk),
        ("edit_date", junk), ("unknown_field", junk),
    ]), max_size=2, unique_by=lambda pair: pair[0])) if chance(draw, 40) else []
    for name, strategy in extras:
        fields[name] = field(strategy)
    if ("sticker" in fields or "document" in fields) and chance(draw, 50):
        fields.pop("text", None)
    return drop_none(fields)


@dataclass
class Example:
    data: object
    fresh_id: bool  # replace update_id with a new valid one (so examples never collide)
    llm_fails: bool  # the scripted LLM returns a malformed result twice (first try and the retry)


OTHER_KEYS = ["edited_message", "channel_post", "my_chat_member", "poll", "message_reaction", "callback_query",
              "something_new"]


@st.composite
def examples(draw: st.DrawFn) -> Example:
    roll = draw(st.integers(0, 99))
    if roll >= 95:  # not an update at all
        return Example(draw(junk), False, False)
    update: dict[str, Any] = {"update_id": 0}
    if roll >= 88:  # an update of random keys
        update.update(draw(st.dictionaries(st.text(max_size=10), junk, max_size=4)))
    elif roll >= 73:  # an update type the gateway does not handle, or junk under its key
        key = draw(st.sampled_from(OTHER_KEYS))
        update[key] = draw(messages() | junk) if key in ("edited_message", "channel_post") else draw(junk)
    else:
        update["message"] = draw(messages())
    fresh = True
    if chance(draw, 8):
        bad_id = draw(st.sampled_from(["missing", True, "7", 2**63, -(2**64), 1.5, None]))
        if bad_id == "missing":
            update.pop("update_id")
        else:
            update["update_id"] = bad_id
        fresh = False
    return Example(update, fresh, chance(draw, 25))


REPLY_METHODS = {"sendMessage", "editMessageText", "sendDocument", "sendPhoto"}


def test_any_update_json_never_raises_and_ends_in_exactly_one_outcome(harness: Harness) -> None:
    counter = itertools.count(1)

    @settings(max_examples=150, deadline=None, derandomize=False, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(examples())
    def check(example: Example) -> None:
        data = example.data
        number = next(counter)
        if example.fresh_id:
            assert isinstance(data, dict)
            data = {**data, "update_id": number}
        # Hypothesis resets the global `random` before every example, and OpenTelemetry draws trace
        # ids from it: without this, every example's turn would get the same trace id (and ref).
        random.seed(number)
        harness.llm.script.clear()
        if example.llm_fails:
            harness.llm.enqueue(BROKEN, BROKEN)  # malformed output is retried once
        before = len(harness.fake.calls())
        outcome = harness.loop.run_until_complete(harness.runtime.process_raw(data))  # must not raise
        sent = [c for c in harness.fake.calls()[before:] if c.method in REPLY_METHODS]
        texts = [str(c.params.get("text", "")) for c in sent]
        assert outcome in KNOWN_OUTCOMES
        assert outcome not in ("error", "duplicate"), outcome  # no last-resort failures, no id collisions
        if outcome == "rejected":
            assert not example.fresh_id and not sent
            return
        assert isinstance(data, dict)
        update_id = data["update_id"]
        journal = harness.journal(update_id)
        assert journal is not None, "an accepted update is always journaled"
        state, error = journal
        assert state in FINAL_STATES, f"left in {state!r}: {outcome}"
        dlq = harness.dlq_count(update_id)
        assert dlq == (1 if outcome == "dlq" else 0)
        if outcome in ("ignored", "malformed"):
            assert not sent and error, (outcome, state, error, texts)  # on purpose, and the journal says why
            assert state == ("ignored" if outcome == "ignored" else "failed")
        elif outcome in ("replied", "refused", "notice"):
            assert state == "replied" and sent, (outcome, texts)
        else:  # failed or dlq: an error reply with the ref, when there is a chat to reply to
            assert state == "failed"
            chat = data.get("message", {}).get("chat", {}) if isinstance(data.get("message"), dict) else {}
            chat_id = chat.get("id") if isinstance(chat, dict) else None
            if type(chat_id) is int and abs(chat_id) < 2**63:
                assert any("ref: " in text for text in texts), (outcome, texts)
            else:
                assert not sent and error, (outcome, error)

    check()


def test_known_shapes_end_as_documented(harness: Harness) -> None:
    """The examples above are random; these pin the main paths down."""
    fake, run = harness.fake, harness.runtime.process_raw

    def go(data: object) -> str:
        return harness.loop.run_until_complete(run(data))

    hello = fake.text_update(ALLOWED, ALLOWED, "hello", update_id=1)
    assert go(hello) == "replied" and fake.sent_texts(ALLOWED)[-1] == "echo: hello"
    assert go(hello) == "duplicate"
    assert go({"update_id": 2, "edited_message": hello["message"]}) == "ignored"
    assert harness.journal(2) == ("ignored", "edited message")
    no_chat = {key: value for key, value in hello["message"].items() if key != "chat"}
    assert go({"update_id": 3, "message": no_chat}) == "failed"
    assert harness.journal(3)[0] == "failed" and "chat" in (harness.journal(3)[1] or "")
    assert go({"update_id": 4, "message": "not an object"}) == "malformed"
    assert harness.journal(4)[0] == "failed"
    for not_an_update in ([], "x", None, {"update_id": True}, {"update_id": "5"}, {"message": {}}):
        assert go(not_an_update) == "rejected"
    surrogate = fake.text_update(ALLOWED, ALLOWED, "odd \ud800 text", update_id=6)
    assert go(surrogate) == "replied" and fake.sent_texts(ALLOWED)[-1] == "echo: odd \ufffd text"
    harness.llm.enqueue(BROKEN, BROKEN)
    assert go(fake.text_update(ALLOWED, ALLOWED, "break please", update_id=7)) == "dlq"
    assert "ref: " in fake.sent_texts(ALLOWED)[-1] and harness.dlq_count(7) == 1
    huge = fake.text_update(ALLOWED, ALLOWED, "y" * 200_001, update_id=8)
    assert go(huge) == "failed" and "could not read that message" in fake.sent_texts(ALLOWED)[-1]
    assert "inbound_message_valid" in (harness.journal(8)[1] or "")


def test_a_failure_outside_the_turn_still_ends_the_update(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """If routing itself breaks (a bug), the update is marked failed and the user is told: no
    silent loss, and no poison row that would crash every later start."""
    import bot.routing

    def broken_route(*args: object, **kwargs: object) -> None:
        raise RuntimeError("routing bug")

    monkeypatch.setattr(bot.routing, "route", broken_route)
    update = harness.fake.text_update(ALLOWED, ALLOWED, "hello", update_id=50)
    assert harness.loop.run_until_complete(harness.runtime.process_raw(update)) == "error"
    assert harness.journal(50)[0] == "failed"
    assert "is kept for the operator" in harness.fake.sent_texts(ALLOWED)[-1]
    assert harness.loop.run_until_complete(harness.services.journal.unfinished()) == []


def test_maintenance_prunes_old_finished_rows_only(harness: Harness) -> None:
    journal = harness.services.journal
    old, recent = "2000-01-01T00:00:00.000+00:00", harness.services.clock.iso()
    for update_id, when, state in ((900, old, "replied"), (901, old, "received"), (902, recent, "replied")):
        harness.loop.run_until_complete(journal.accept(update_id=update_id, chat_id=1, user_id=1, kind="update",
                                                       raw={"update_id": update_id}, trace_id=None, now=when))
        if state != "received":
            harness.loop.run_until_complete(journal.mark(update_id, state, now=when))
    harness.loop.run_until_complete(harness.runtime.maintain())
    assert harness.journal(900) is None  # finished and a week old: gone
    assert harness.journal(901) == ("received", None)  # unfinished work is never pruned
    assert harness.journal(902)[0] == "replied"
