"""Test-wide isolation: no network beyond loopback, no stray settings, a temp DATA_DIR."""

from __future__ import annotations

import os

import pytest

# tiktoken would try to download the model's encoding: tests use the bundled one, offline.
os.environ["GATEWAY_OFFLINE_TOKENS"] = "1"

_SETTING_PREFIXES = ("TELEGRAM_", "LLM_", "OPENAI_", "OPERATOR_", "ALLOWED_", "WEBHOOK_", "OTEL_", "USER_",
                     "MONTHLY_", "BREAKER_", "ESCALATION_", "HOT_STATE_", "DLQ_", "TELEMETRY_")
# The test hooks (config/settings.py TestHooks) too: a test that wants them sets them itself.
_SETTING_NAMES = ("DATA_DIR", "DATABASE_URL", "LEASE_SECONDS", "PORT", "DYNO", "GATEWAY_TEST_HOOKS", "RETRY_WAIT_SCALE", "GATEWAY_CLOCK_OFFSET_FILE")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    """Settings come only from what a test sets: DATA_DIR is a temp folder, no .env is read."""
    for name in list(os.environ):
        if name.startswith(_SETTING_PREFIXES) or name in _SETTING_NAMES:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
