"""Several instances of one bot on one PostgreSQL database (issue 16): two webhook processes share the
work without answering twice or out of order, one killed with SIGKILL mid-turn is resumed by the
other within LEASE_SECONDS plus a turn, and a second long poller is refused at start.

PostgreSQL only: on SQLite one DATA_DIR serves one process (its file lock refuses a second)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import POSTGRES_ONLY, free_port
from tests.e2e.journal import journal_states, settled
from tests.fakes.llm_api import Hang, Reply

pytestmark = pytest.mark.e2e
LEASE_SECONDS = 3
USERS = (100, 101, 102)
WEBHOOK = "https://bot.example.com/telegram"


class Instance:
    """One bot process of the two, and the port its webhook listens on."""

    def __init__(self, bot: Any, tmp_path: Path, index: int) -> None:
        self.port = free_port()
        data_dir = tmp_path / f"instance-{index}"  # two machines: nothing shared but the database
        data_dir.mkdir()
        self.process = bot(WEBHOOK_URL=WEBHOOK, PORT=self.port, DATA_DIR=data_dir, LEASE_SECONDS=LEASE_SECONDS)


def two_instances(bot: Any, tmp_path: Path) -> tuple[Instance, Instance]:
    return Instance(bot, tmp_path, 0), Instance(bot, tmp_path, 1)


def slow_echo(body: dict[str, Any]) -> Reply:
    """The echo, streamed slowly enough that turns of one chat would overlap if nothing stopped them."""
    last = next(m for m in reversed(body["messages"]) if m.get("role") == "user")
    text = last["content"] if isinstance(last["content"], str) else str(last["content"])
    return Reply(f"echo: {text[-12:]}", chunk_chars=4, delay_s=0.03)


def user_texts(request: Any) -> list[str]:
    return [m["content"] for m in request.messages if m.get("role") == "user" and isinstance(m["content"], str)]


@POSTGRES_ONLY
def test_two_webhook_instances_answer_every_message_once_and_in_order(bot, fake_telegram, fake_llm,
                                                                         tmp_path) -> None:
    a, b = two_instances(bot, tmp_path)
    fake_llm.set_default(slow_echo)
    sent: dict[int, list[str]] = {user: [] for user in USERS}
    update_id = 5000
    with ThreadPoolExecutor(max_workers=2) as pool:
        for round_ in range(6):
            for user in USERS:
                update_id += 1
                text = f"m{round_} of {user}"
                update = fake_telegram.text_update(user, user, text, update_id=update_id)
                sent[user].append(text)
                if update_id % 3 == 0:  # to both at once, as a Telegram retry reaching the other instance
                    statuses = list(pool.map(lambda p, u=update: fake_telegram.deliver_webhook(u, p)[0], (a.port, b.port)))
                else:  # alternately to each
                    statuses = [fake_telegram.deliver_webhook(update, (a, b)[update_id % 2].port)[0]]
                assert statuses == [200] * len(statuses)
    for user in USERS:
        fake_telegram.wait_for(lambda user=user: len(fake_telegram.sent_texts(user)) >= 6, timeout=60,
                               message=f"six answers in chat {user}")
    time.sleep(0.5)  # nothing more may come: a double answer would show up now
    for user in USERS:
        assert fake_telegram.sent_texts(user) == [f"echo: {t[-12:]}" for t in sent[user]]
    assert fake_llm.count() == 18  # one LLM call per message: nothing was answered twice
    by_chat: dict[str, list[list[str]]] = {}
    for request in fake_llm.completions():
        texts = user_texts(request)
        by_chat.setdefault(texts[-1].split(" of ")[1], []).append(texts)
    for user in USERS:  # each turn saw every earlier message of its chat in its history: run in order
        prompts = by_chat[str(user)]
        assert [p[-1] for p in prompts] == sent[user]
        assert prompts == [sent[user][:i + 1] for i in range(len(sent[user]))]
    fake_telegram.wait_for(lambda: settled(bot, range(5001, update_id + 1)), timeout=10, message="all settled")
    rows = bot.query("SELECT state, COUNT(*) FROM journal GROUP BY state")
    assert dict(rows) == {"replied": 18}
    assert "taking over" not in a.process.output() + b.process.output()  # nobody died: nothing was taken over


@POSTGRES_ONLY
def test_an_instance_killed_mid_turn_is_resumed_by_the_other(bot, fake_telegram, fake_llm, tmp_path) -> None:
    a, b = two_instances(bot, tmp_path)
    fake_llm.enqueue(Hang(60))  # a's call hangs ...
    update = fake_telegram.text_update(100, 100, "are you there", update_id=7001)
    assert fake_telegram.deliver_webhook(update, a.port)[0] == 200
    fake_telegram.wait_for(lambda: fake_llm.count() == 1, timeout=20, message="a's LLM call")
    a.process.kill()  # ... and a dies with it (SIGKILL: no clean stop, its leases stay until they expire)
    killed_at = time.monotonic()
    later = fake_telegram.text_update(100, 100, "and then", update_id=7002)
    assert fake_telegram.deliver_webhook(later, b.port)[0] == 200  # the chat's next message reaches b
    fake_telegram.wait_for_text(100, "echo: are you there", timeout=LEASE_SECONDS + 20)
    took_s = time.monotonic() - killed_at
    fake_telegram.wait_for_text(100, "echo: and then", timeout=20)
    assert took_s < LEASE_SECONDS + 10, took_s  # the lease, the sweeper's second, one turn (slack for CI)
    assert fake_telegram.sent_texts(100) == ["echo: are you there", "echo: and then"]  # once each, in order
    assert "taking over 1 unfinished update(s)" in b.process.output()
    # The journal row is marked after sendMessage returns: wait for it rather than racing it.
    fake_telegram.wait_for(lambda: settled(bot, [7001, 7002]), timeout=10, message="both updates settled")
    assert journal_states(bot) == {7001: "replied", 7002: "replied"}


@POSTGRES_ONLY
def test_a_second_long_poller_on_the_same_database_is_refused(bot, tmp_path) -> None:
    bot()  # polls
    other = tmp_path / "other"
    other.mkdir()
    second = bot(wait=False, DATA_DIR=other)
    deadline = time.monotonic() + 30
    while second.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.returncode == 1
    output = second.output()
    assert "another instance is already long-polling" in output and "WEBHOOK_URL" in output
    assert "Traceback" not in output
