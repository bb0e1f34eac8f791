"""PostgreSQL end to end (DATABASE_URL), where PostgreSQL is the point: a PaaS wiping the disk
between two runs loses nothing, two instances starting at once on an empty database migrate it
once and both serve, and a database that cannot be reached stops the start with one line.

The rest of the e2e suite runs on both backends (the `backend` fixture); these tests run on
PostgreSQL only, through the real entry points (`python -m bot run`, `dlq`, `trace`).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from core.store.pg_schema import MIGRATIONS
from tests.e2e.backend import with_password
from tests.e2e.harness import POSTGRES_ONLY, free_port, run_cli
from tests.fakes.llm_api import Error
from tests.fakes.telegram_api import FakeTelegram

pytestmark = [pytest.mark.e2e, POSTGRES_ONLY]
USER, OTHER = 100, 101
REF = re.compile(r"ref: ([0-9a-f]{8})")
ARTIFACT = re.compile(r"artifact://[0-9a-f]{12,64}")
# No auto-replay: the DLQ entry written by the first run must still be there for the second.
SETTINGS = {"RETRY_WAIT_SCALE": "0", "DLQ_AUTO_REPLAY": "false"}


def command(fake_telegram: FakeTelegram, chat_id: int, text: str, expect: str, timeout: float = 20) -> str:
    """Send `text` as the chat's user; the first new message containing `expect`."""
    before = len(fake_telegram.messages(chat_id))
    fake_telegram.push_update(fake_telegram.text_update(chat_id, chat_id, text))

    def found() -> str | None:
        return next((m.plain_text for m in fake_telegram.messages(chat_id)[before:]
                     if m.plain_text and expect in m.plain_text), None)

    return fake_telegram.wait_for(found, timeout, message=f"no answer to {text!r} containing {expect!r}: "
                                                          f"{fake_telegram.sent_texts(chat_id)[before:]!r}")


def dlq_list(env: dict[str, str]) -> list[dict]:
    listed = run_cli(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


# A PaaS wipes the disk between two runs ----------------------------------------------------------
def first_run(bot, fake_telegram: FakeTelegram, fake_llm) -> dict:  # noqa: ANN001 - fixtures
    """History, hot state, an artifact, a DLQ entry and traces, made the way users make them."""
    proc = bot(**SETTINGS)
    command(fake_telegram, USER, "my name is Ann and I live in Oslo", "echo: my name is Ann")
    command(fake_telegram, USER, "/remember I am allergic to peanuts", "added item")
    document = b"Quarterly numbers\n" + b"revenue 42, costs 17\n" * 500
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, document, "numbers.txt", "text/plain"))
    stored = fake_telegram.wait_for_text(USER, "stored as artifact://", timeout=20).plain_text
    artifact = ARTIFACT.search(stored).group(0)
    fake_llm.enqueue(Error.server_error(), Error.server_error())  # the first try and its one retry
    failure = command(fake_telegram, OTHER, "this one fails", "ref: ")
    failed_ref = REF.search(failure).group(1)
    fake_telegram.wait_for(lambda: dlq_list(proc.env), timeout=15, message="the failed turn reached the DLQ")
    [entry] = dlq_list(proc.env)
    assert proc.stop() == 0  # a clean stop flushes the last spans
    return {"artifact": artifact, "document": document, "entry": entry, "failed_ref": failed_ref}


def test_a_wiped_data_dir_loses_nothing(bot, fake_telegram, fake_llm, data_dir) -> None:
    made = first_run(bot, fake_telegram, fake_llm)
    left = sorted(p.name for p in data_dir.rglob("*") if p.is_file())
    assert not [name for name in left if name.endswith(".db")], f"state on the local disk: {left}"
    shutil.rmtree(data_dir)  # what Heroku does at every restart

    asked = fake_llm.count()
    bot(**SETTINGS)
    # History: the second run's prompt carries the first run's exchange ...
    command(fake_telegram, USER, "what is my name?", "echo: what is my name?")
    request = fake_llm.completions()[asked]
    contents = [m.get("content") for m in request.messages]
    assert "my name is Ann and I live in Oslo" in contents and "echo: my name is Ann and I live in Oslo" in contents
    # ... and the hot state rides in its system prompt.
    system = request.messages[0]["content"]
    assert "I am allergic to peanuts" in system[system.rfind("<hot_state>"):], system[-2000:]
    # The artifact comes back byte for byte.
    command(fake_telegram, USER, f"/artifact {made['artifact']}", made["artifact"])
    fake_telegram.wait_for(lambda: fake_telegram.documents(USER, "document"), timeout=15)
    sent = fake_telegram.documents(USER, "document")[-1]
    assert sent.data == made["document"] and sent.file_name == "numbers.txt"
    # The DLQ entry is still pending, and the failed turn's trace is still there.
    env = bot.env(**SETTINGS)
    [entry] = dlq_list(env)
    assert entry["id"] == made["entry"]["id"] and entry["status"] == "pending"
    traced = run_cli(env, "trace", made["failed_ref"])
    assert traced.returncode == 0, traced.stdout + traced.stderr
    assert "turn" in traced.stdout and "llm" in traced.stdout, traced.stdout
    assert not data_dir.exists() or not list(data_dir.rglob("*.db")), "the second run wrote SQLite files"


# Two instances start at once ---------------------------------------------------------------------
def test_two_instances_starting_at_once_migrate_once_and_both_serve(bot, fake_telegram, fake_llm) -> None:
    ports = [free_port(), free_port()]
    procs = [bot(wait=False, WEBHOOK_URL="https://bot.example.com/hook", PORT=str(port)) for port in ports]
    for proc in procs:
        proc.wait_ready(fake_telegram, timeout=30)
    applied = [name for (name,) in bot.query("SELECT name FROM schema_migrations ORDER BY name")]
    assert applied == sorted(name for name, _ in MIGRATIONS)  # each once: `name` is the key, none missing
    for index, (port, user) in enumerate(zip(ports, (USER, OTHER), strict=True)):
        update = fake_telegram.text_update(user, user, f"hello instance {index}", update_id=5000 + index)
        status, body = fake_telegram.deliver_webhook(update, port)
        assert status == 200, body
        fake_telegram.wait_for_text(user, f"echo: hello instance {index}", timeout=20)
    assert all(proc.alive() for proc in procs)
    for proc in procs:
        assert "Traceback" not in proc.output(), proc.tail()
    assert sorted(uid for (uid,) in bot.query("SELECT update_id FROM journal")) == [5000, 5001]


# A database that cannot be used ------------------------------------------------------------------
def unreachable_urls(good: str) -> dict[str, str]:
    """DATABASE_URLs that cannot work, each with a password that must not be printed. The test
    server trusts every local connection, so a wrong password is refused as an unknown role."""
    base, _, _ = good.rpartition("/")
    host = re.sub(r"^postgres(ql)?://[^@]*@", "", base)
    return {
        "closed port": f"postgresql://postgres:pw-closed-SECRET@127.0.0.1:{free_port()}/gateway",
        "unknown role": with_password(f"postgresql://nobody_e2e@{host}/test", "pw-role-SECRET"),
        "missing database": with_password(f"postgresql://postgres@{host}/gw_missing_e2e", "pw-db-SECRET"),
    }


@pytest.mark.parametrize("case", ["closed port", "unknown role", "missing database"])
def test_a_database_that_cannot_be_used_is_one_line_without_the_password(bot, case) -> None:
    url = unreachable_urls(bot.database_url)[case]
    password = url.split("@", 1)[0].rsplit(":", 1)[1]
    result = run_cli(bot.env(DATABASE_URL=url), "run", timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0], result.stderr
    assert "Traceback" not in output and password not in output, output
