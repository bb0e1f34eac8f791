"""Models end to end: /model per chat, fallbacks while a model is down, two providers at once.

The LLM stand-in serves two models here (gpt-4o-mini, the default, and gpt-4o), each answering
as itself; `fail_model` takes one down while the other answers. A second stand-in with its own
key plays a second provider, described in a models file (config/models.toml's format).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import OPERATOR_ID, TEST_LLM_KEY, BotProcess, run_cli
from tests.fakes.llm_api import Error, FakeLLM
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
FAST = {"RETRY_WAIT_SCALE": "0"}
OTHER_KEY = "sk-other-SECRET-provider-key-9876543210"
NOTICE = "— answered by gpt-4o (gpt-4o-mini is unavailable: "


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """One provider serving two models (overrides the conftest's single-model stand-in)."""
    fake = FakeLLM("gpt-4o-mini", api_key=TEST_LLM_KEY, models=("gpt-4o",)).start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server_errors()


def say(fake_telegram: FakeTelegram, text: str, user: int = 100) -> None:
    fake_telegram.push_update(fake_telegram.text_update(user, user, text))


def answer(fake_telegram: FakeTelegram, chat_id: int, substring: str, timeout: float = 15) -> str:
    message = fake_telegram.wait_for_text(chat_id, substring, timeout=timeout)
    return message.plain_text or message.text or ""


def models_asked(fake: FakeLLM) -> list[str]:
    return [r.body["model"] for r in fake.completions()]


def dlq_entries(proc: BotProcess) -> list[dict]:
    result = run_cli(proc.env, "dlq", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def menu(fake_telegram: FakeTelegram, since: float) -> list[str]:
    call = [c for c in fake_telegram.calls("setMyCommands") if c.at >= since][0]
    commands = call.params["commands"]
    commands = json.loads(commands) if isinstance(commands, str) else commands
    return [c["command"] for c in commands]


def test_model_switch_is_per_chat_and_survives_a_restart(bot, fake_telegram, fake_llm) -> None:
    started = time.monotonic()
    first = bot(LLM_MODELS="gpt-4o")
    assert "model" in menu(fake_telegram, started)
    say(fake_telegram, "/model")
    shown = answer(fake_telegram, 100, "This chat uses")
    assert "This chat uses gpt-4o-mini" in shown and "gpt-4o-mini (default), gpt-4o" in shown
    say(fake_telegram, "/model gpt-4o")
    answer(fake_telegram, 100, "This chat now uses gpt-4o.")
    say(fake_telegram, "hello from 100")
    answer(fake_telegram, 100, "echo: hello from 100")
    say(fake_telegram, "hello from 101", user=101)
    answer(fake_telegram, 101, "echo: hello from 101")
    assert models_asked(fake_llm) == ["gpt-4o", "gpt-4o-mini"]  # chat 101 did not see 100's switch
    assert first.stop() == 0

    bot(LLM_MODELS="gpt-4o")
    say(fake_telegram, "again from 100")
    answer(fake_telegram, 100, "echo: again from 100")
    assert models_asked(fake_llm)[-1] == "gpt-4o"  # stored, not in memory
    say(fake_telegram, "/model default")
    answer(fake_telegram, 100, "back on the default model, gpt-4o-mini")
    say(fake_telegram, "and now")
    answer(fake_telegram, 100, "echo: and now")
    assert models_asked(fake_llm)[-1] == "gpt-4o-mini"


def test_an_unknown_model_is_refused_by_name_and_one_model_has_no_menu_entry(bot, fake_telegram, fake_llm) -> None:
    bot(LLM_MODELS="gpt-4o")
    say(fake_telegram, "/model gpt-5-turbo-max")
    refusal = answer(fake_telegram, 100, "There is no model")
    assert "'gpt-5-turbo-max'" in refusal and "gpt-4o-mini (default), gpt-4o" in refusal
    say(fake_telegram, "still here")
    answer(fake_telegram, 100, "echo: still here")
    assert models_asked(fake_llm) == ["gpt-4o-mini"]  # the refused name changed nothing

    started = time.monotonic()
    bot.processes[-1].stop()
    bot()  # LLM_MODEL only: nothing to choose
    assert "model" not in menu(fake_telegram, started)


def test_a_primary_answering_500_is_covered_by_the_fallback_with_a_notice(bot, fake_telegram, fake_llm) -> None:
    proc = bot(LLM_FALLBACK_MODELS="gpt-4o", **FAST)
    fake_llm.fail_model("gpt-4o-mini", Error.server_error())
    say(fake_telegram, "are you there")
    text = answer(fake_telegram, 100, NOTICE)
    assert text.startswith("echo: are you there") and text.endswith(NOTICE + "server error)")
    assert models_asked(fake_llm) == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]  # one retry, one fallback
    assert dlq_entries(proc) == []
    assert not [t for t in fake_telegram.sent_texts(100) if "ref:" in t]  # no error reply
    say(fake_telegram, "/budget", user=OPERATOR_ID)
    budget = answer(fake_telegram, OPERATOR_ID, "By model this month:")
    assert "\n  gpt-4o: " in budget and "\n  gpt-4o-mini: " in budget
    say(fake_telegram, "/usage")
    assert "By model:" in answer(fake_telegram, 100, "Your last 7 days")
    say(fake_telegram, "/status")
    status = answer(fake_telegram, 100, "Circuit: ")
    assert "Model: gpt-4o-mini @ 127.0.0.1" in status and "failures 100%" in status
    assert "gpt-4o (fallback): circuit closed; 1 calls, p50 " in status
    assert proc.stop() == 0

    rows = bot.query("SELECT model, wasted FROM usage ORDER BY id")
    assert rows == [("gpt-4o-mini", 1), ("gpt-4o-mini", 1), ("gpt-4o", 0)]
    spans = sorted((s for s in bot.spans() if s["name"].startswith("chat ")), key=lambda s: s["start_ns"])
    assert [s["name"] for s in spans] == ["chat gpt-4o-mini", "chat gpt-4o-mini", "chat gpt-4o"]
    assert spans[-1]["status"] != "ERROR"

    # History keeps the answer without the notice: the next prompt does not teach the model to sign.
    [stored] = bot.query("SELECT content FROM messages WHERE role = 'assistant'")
    assert stored == ("echo: are you there",)


def test_an_open_circuit_is_skipped_without_a_call_until_its_reset(bot, fake_telegram, fake_llm) -> None:
    reset_s = 3.0
    bot(LLM_FALLBACK_MODELS="gpt-4o", BREAKER_FAILURE_THRESHOLD=2, BREAKER_RESET_SECONDS=reset_s, **FAST)
    fake_llm.fail_model("gpt-4o-mini", Error.server_error())
    say(fake_telegram, "one")
    answer(fake_telegram, 100, NOTICE + "server error)")  # two failures: the circuit opens
    opened_at = fake_llm.completions("gpt-4o-mini")[-1].at
    fake_telegram.wait_for(lambda: [t for t in fake_telegram.sent_texts(OPERATOR_ID) if "opened after" in t], 10)
    say(fake_telegram, "two", user=101)
    answer(fake_telegram, 101, NOTICE + "circuit open)")
    assert len(fake_llm.completions("gpt-4o-mini")) == 2  # skipped, not called

    fake_llm.clear_failures()
    time.sleep(max(0.0, opened_at + reset_s + 0.2 - time.monotonic()))
    say(fake_telegram, "three", user=102)
    text = answer(fake_telegram, 102, "echo: three")
    assert "answered by" not in text  # the probe went to the primary, which answered
    probe = fake_llm.completions("gpt-4o-mini")[2]
    assert probe.at >= opened_at + reset_s - 0.05
    fake_telegram.wait_for(lambda: [t for t in fake_telegram.sent_texts(OPERATOR_ID) if "Recovered" in t], 10)
    alerts = fake_telegram.sent_texts(OPERATOR_ID)
    assert len([t for t in alerts if "opened after" in t]) == 1
    assert len([t for t in alerts if "Recovered" in t]) == 1


def test_two_providers_each_receive_only_their_own_key(bot, fake_telegram, fake_llm, tmp_path: Path) -> None:
    other = FakeLLM("llama3.1", api_key=OTHER_KEY).start()
    try:
        models_file = tmp_path / "models.toml"
        models_file.write_text(f'[models."llama3.1"]\nbase_url = "{other.base_url}"\n'
                               'api_key_env = "LOCAL_LLM_KEY"\ncontext_tokens = 8192\n'
                               'input_per_mtok = 0.0\noutput_per_mtok = 0.0\n', encoding="utf-8")
        proc = bot(LLM_MODELS="llama3.1", MODELS_FILE=models_file, LOCAL_LLM_KEY=OTHER_KEY)
        say(fake_telegram, "/model llama3.1")
        answer(fake_telegram, 100, "This chat now uses llama3.1.")
        say(fake_telegram, "local please")
        answer(fake_telegram, 100, "echo: local please")
        say(fake_telegram, "remote please", user=101)
        answer(fake_telegram, 101, "echo: remote please")

        assert [r.header("Authorization") for r in other.completions()] == [f"Bearer {OTHER_KEY}"]
        assert [r.header("Authorization") for r in fake_llm.completions()] == [f"Bearer {TEST_LLM_KEY}"]
        assert models_asked(other) == ["llama3.1"] and models_asked(fake_llm) == ["gpt-4o-mini"]
        assert proc.stop() == 0
        assert OTHER_KEY not in proc.output()

        doctor = run_cli(proc.env, "doctor")  # checks the second provider with its own key
        assert "[ok  ] models: choices gpt-4o-mini, llama3.1; fallbacks none" in doctor.stdout
        assert "[ok  ] llm llama3.1: 127.0.0.1:" in doctor.stdout and "llama3.1 available" in doctor.stdout
        assert OTHER_KEY not in doctor.stdout + doctor.stderr
        assert other.requests[-1].header("Authorization") == f"Bearer {OTHER_KEY}"
        assert other.server_errors() == []
    finally:
        other.stop()


def test_a_broken_models_file_stops_the_start_with_one_line(bot, tmp_path: Path) -> None:
    models_file = tmp_path / "models.toml"
    models_file.write_text('[models."llama3.1"]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "UNSET_KEY"\n',
                           encoding="utf-8")
    proc = bot(wait=False, MODELS_FILE=models_file)
    for _ in range(200):
        if not proc.alive():
            break
        time.sleep(0.05)
    assert proc.returncode == 1
    assert "cannot use the models file: model 'llama3.1': api_key_env names 'UNSET_KEY', which is not set" \
        in proc.output()
    assert "Traceback" not in proc.output()
