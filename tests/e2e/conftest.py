"""Fixtures for end-to-end tests: fresh fakes and a bot-process factory per test.

Why function scope: every e2e test gets its own Bot API, LLM and data directory,
so one test's queued updates, scripted failures or SQLite state never leak into
the next. Starting the fakes takes milliseconds; the bot process dominates.

Every test that starts a bot through the ``bot`` fixture runs twice, ``[sqlite]`` and
``[postgres]`` (the ``backend`` fixture): on PostgreSQL each test gets a database of its own,
created before and dropped (WITH FORCE) after, given to the bot as DATABASE_URL. A test about one
backend only overrides it with ``harness.SQLITE_ONLY`` / ``POSTGRES_ONLY`` and says why.

Each e2e module should say ``pytestmark = pytest.mark.e2e`` (a conftest cannot
mark tests for you; the marker is registered in the project's pytest config).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.backend import BACKENDS, Backend
from tests.e2e.harness import TEST_LLM_KEY, TEST_TOKEN, BotFactory
from tests.fakes.llm_api import FakeLLM
from tests.fakes.telegram_api import FakeTelegram


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    """A fake Bot API that accepts only TEST_TOKEN."""
    fake = FakeTelegram(TEST_TOKEN).start()
    try:
        yield fake
    finally:
        fake.stop()
    errors = fake.server_errors()
    assert not errors, "FakeTelegram had internal errors:\n" + "\n".join(errors)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    """A fake LLM that requires TEST_LLM_KEY (proves the bot sends its configured key)."""
    fake = FakeLLM("gpt-4o-mini", api_key=TEST_LLM_KEY).start()
    try:
        yield fake
    finally:
        fake.stop()
    errors = fake.server_errors()
    assert not errors, "FakeLLM had internal errors:\n" + "\n".join(errors)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The bot's DATA_DIR (created empty; delete it in a test to check creation)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which storage the bot under test uses: "sqlite" (DATA_DIR) or "postgres" (DATABASE_URL)."""
    return str(request.param)


@pytest.fixture
def storage(backend: str, data_dir: Path) -> Iterator[Backend]:
    """The test's storage; on PostgreSQL a fresh database, dropped after the bots are stopped."""
    if backend == "sqlite":
        yield Backend.sqlite(data_dir)
        return
    store = Backend.postgres(data_dir)
    try:
        yield store
    finally:
        store.drop()


@pytest.fixture
def bot(
    fake_telegram: FakeTelegram, fake_llm: FakeLLM, data_dir: Path, tmp_path: Path, storage: Backend
) -> Iterator[BotFactory]:
    """``bot(**env_overrides) -> BotProcess``: start a bot and wait until it is ready.

    At teardown every process started is stopped (SIGTERM) and its output is
    checked: neither the bot token, the LLM key nor the database password may appear in it.
    """
    factory = BotFactory(fake_telegram, fake_llm, data_dir, tmp_path / "logs", storage)
    try:
        yield factory
    finally:
        problems = factory.shutdown()
        # Shown by pytest only when the test fails: the redacted end of each log.
        for description in factory.describe():
            print(description)
    if problems:
        pytest.fail(
            "secrets (bot token / LLM key / database password) appeared in bot output:\n"
            + "\n".join(problems),
            pytrace=False,
        )
