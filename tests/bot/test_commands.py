"""Commands through the real entry point (`process_raw`) against the Bot API stand-in: sending an
artifact back survives one 5xx or network failure, and a failure that persists is told to the
user with the refs, never dropped silently."""

from __future__ import annotations

import dataclasses
import re

from bot import commands
from bot.command_context import CommandContext
from core.access import Access
from core.replay import ReplayResult
from tests.bot.conftest import ALLOWED, STRANGER, Harness

CONTENT = b"# Notes\n\nsome notes worth keeping\n"


def stored_ref(harness: Harness) -> str:
    services = harness.services
    info = harness.loop.run_until_complete(services.artifacts.put(content=CONTENT, media_type="text/markdown", chat_id=ALLOWED, user_id=ALLOWED,
                                  label="notes", summary="notes", kind="document", trace_id=None,
                                  now=services.clock.iso()))
    return info.ref


def ask(harness: Harness, text: str, update_id: int) -> str:
    update = harness.fake.text_update(ALLOWED, ALLOWED, text, update_id=update_id)
    return harness.loop.run_until_complete(harness.runtime.process_raw(update))


def test_artifact_is_sent_after_one_server_error(harness: Harness) -> None:
    ref = stored_ref(harness)
    harness.fake.fail("sendDocument", 502, times=1)
    assert ask(harness, f"/artifact {ref}", 1) == "replied"
    assert len(harness.fake.calls("sendDocument")) == 2  # the failed attempt and its one retry
    [document] = harness.fake.documents(ALLOWED)
    assert document.data == CONTENT and document.file_name == "notes.md"
    assert not [t for t in harness.fake.sent_texts(ALLOWED) if "did not take" in t]


def test_artifact_that_keeps_failing_is_told_with_the_refs(harness: Harness) -> None:
    ref = stored_ref(harness)
    harness.fake.fail("sendDocument", 500, times=2)
    assert ask(harness, f"/artifact {ref}", 2) == "replied"
    assert len(harness.fake.calls("sendDocument")) == 2  # retried once, not more
    assert harness.fake.documents(ALLOWED) == []
    notice = harness.fake.sent_texts(ALLOWED)[-1]
    assert "did not take the file" in notice and ref in notice and re.search(r"ref: [0-9a-f]{8}", notice)


def test_a_rejected_artifact_is_not_retried_but_still_told(harness: Harness) -> None:
    ref = stored_ref(harness)
    harness.fake.fail("sendDocument", 400, "Bad Request: file must be non-empty", times=1)
    assert ask(harness, f"/artifact {ref}", 3) == "replied"
    assert len(harness.fake.calls("sendDocument")) == 1  # a 400 would fail the same way again
    assert "did not take the file" in harness.fake.sent_texts(ALLOWED)[-1]


def start_text(harness: Harness, user_id: int, **settings: object) -> str:
    config = harness.services.settings.model_copy(update=settings)
    access = Access(harness.services.access.records, harness.services.outbox, config, harness.services.clock)
    services = dataclasses.replace(harness.services, settings=config, access=access)
    ctx = CommandContext(services=services, chat_id=user_id, user_id=user_id, user_name="Ann", args="",
                         trace_id="a" * 32, replay=_no_replay, replay_all=_no_replay_all)
    return harness.loop.run_until_complete(commands.start(ctx)).text


async def _no_replay(dlq_id: int) -> ReplayResult:
    raise AssertionError("not used")


async def _no_replay_all() -> list[ReplayResult]:
    raise AssertionError("not used")


def test_start_sends_strangers_only_to_someone_who_exists(harness: Harness) -> None:
    paired = start_text(harness, STRANGER)  # an operator, so pairing by default: a code to show them
    assert re.search(r"pairing code is [A-Z2-9]{4}-[A-Z2-9]{4}", paired) and str(STRANGER) in paired
    assert "ask the operator" in start_text(harness, STRANGER, access_policy="allowlist")
    alone = start_text(harness, STRANGER, operator_chat_id=None, allowed_user_ids="")
    assert "Nobody can chat with this bot yet" in alone and "operator" not in alone.replace("OPERATOR_CHAT_ID", "")
    listed = start_text(harness, STRANGER, operator_chat_id=None, allowed_user_ids=str(ALLOWED))
    assert "ask whoever runs it" in listed
    assert "You can chat with me" in start_text(harness, ALLOWED, operator_chat_id=None)
