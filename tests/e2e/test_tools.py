"""Tools that answer the model: a call the model got wrong comes back to it as the tool's result,
naming the field and what is allowed, and the turn ends in the model's next answer (no DLQ)."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.harness import run_cli
from tests.fakes.llm_api import Reply, ToolCalls
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
REF = re.compile(r"artifact://[0-9a-f]{12,64}")


def tool_results(request) -> list[dict]:  # noqa: ANN001 - a RecordedRequest
    return [json.loads(m["content"]) for m in request.messages if m.get("role") == "tool"]


def dlq_depth(bot) -> int:  # noqa: ANN001 - the BotFactory fixture
    listed = run_cli(bot.env(), "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return len([line for line in listed.stdout.splitlines() if line.strip()])


def ask(fake_telegram: FakeTelegram, text: str, answer: str) -> None:
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))
    fake_telegram.wait_for_text(USER, answer, timeout=20)


def test_invalid_tool_calls_are_answered_to_the_model_which_then_answers(bot, fake_telegram, fake_llm) -> None:
    bot(RETRY_WAIT_SCALE="0")
    # A section the agent may not write: the model hears which sections exist, then answers.
    wrong_section = {"add": [{"section": "artifacts", "text": "likes trains"}]}
    fake_llm.enqueue(ToolCalls([("call_1", "update_hot_state", json.dumps(wrong_section))]),
                     Reply("Noted, thanks."))
    ask(fake_telegram, "remember that I like trains", "Noted, thanks.")
    last = fake_llm.last_request()
    [result] = tool_results(last)
    assert result["ok"] is False
    assert "add[0].section" in result["error"] and "'facts'" in result["error"] and "artifacts" in result["error"]
    assert [m["role"] for m in last.messages][-2:] == ["assistant", "tool"]

    # Arguments that are not JSON, then an unknown tool: each told to the model, within the rounds.
    fake_llm.enqueue(ToolCalls([("call_2", "read_artifact", '{"ref": "artifact://0123')]),
                     ToolCalls([("call_3", "delete_everything", "{}")]),
                     Reply("I could not read it."))
    ask(fake_telegram, "read my file", "I could not read it.")
    not_json, unknown = tool_results(fake_llm.last_request())
    assert "arguments" in not_json["error"] and "not JSON" in not_json["error"]
    assert "name" in unknown["error"] and "read_artifact, update_hot_state" in unknown["error"]

    errors = [m.text for m in fake_telegram.messages(USER) if "ref:" in m.text]
    assert errors == [] and dlq_depth(bot) == 0


def test_read_artifact_over_its_cap_returns_the_capped_slice_and_says_so(bot, fake_telegram, fake_llm) -> None:
    bot()
    text = "\n".join(f"Line {n:05d}: the quick brown fox jumps over the lazy dog." for n in range(3000))
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, text.encode(), "notes.txt", "text/plain"))
    fake_telegram.wait_for_text(USER, "echo: [Document notes.txt stored as artifact://", timeout=20)
    ref = REF.search(fake_llm.last_request().messages[-1]["content"]).group(0)

    fake_llm.enqueue(ToolCalls([("call_big", "read_artifact", json.dumps({"ref": ref, "max_tokens": 5000}))]),
                     Reply("Read the capped part."))
    ask(fake_telegram, "read all of it", "Read the capped part.")
    [result] = tool_results(fake_llm.last_request())
    assert result["ok"] is True and result["capped_at"] == 2000 and "capped" in result["note"]
    assert result["offset"] == 0 and 0 < result["next_offset"] <= 2000 and text.startswith(result["text"])
