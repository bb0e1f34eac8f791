"""Settings users see, and the test hooks they do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from config.settings import Settings, TestHooks, database_url_shown, format_errors, load_settings


def test_test_hooks_are_not_user_settings() -> None:
    assert "retry_wait_scale" not in Settings.model_fields
    assert "gateway_clock_offset_file" not in Settings.model_fields


def test_test_hooks_are_ignored_without_the_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RETRY_WAIT_SCALE", "0")
    monkeypatch.setenv("GATEWAY_CLOCK_OFFSET_FILE", str(tmp_path / "offset"))
    settings = Settings(_env_file=None)
    assert settings.retry_wait_scale == 1.0
    assert settings.gateway_clock_offset_file is None


def test_test_hooks_are_read_with_the_switch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_TEST_HOOKS", "1")
    monkeypatch.setenv("RETRY_WAIT_SCALE", "0")
    monkeypatch.setenv("GATEWAY_CLOCK_OFFSET_FILE", str(tmp_path / "offset"))
    settings = Settings(_env_file=None)
    assert settings.retry_wait_scale == 0.0
    assert settings.gateway_clock_offset_file == tmp_path / "offset"


def test_a_test_hook_in_dot_env_is_an_unknown_setting(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("RETRY_WAIT_SCALE=0\n")
    with pytest.raises(SystemExit):
        load_settings(_env_file=str(env_file))
    assert "RETRY_WAIT_SCALE: unknown setting" in capsys.readouterr().err


def test_in_process_callers_may_still_pass_the_hooks_as_keywords() -> None:
    settings = Settings(_env_file=None, retry_wait_scale=0.0)
    assert settings.retry_wait_scale == 0.0
    assert Settings(_env_file=None, test_hooks=TestHooks(retry_wait_scale=0.5)).retry_wait_scale == 0.5


def test_a_bad_hook_value_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_TEST_HOOKS", "1")
    monkeypatch.setenv("RETRY_WAIT_SCALE", "-1")
    with pytest.raises(SystemExit):
        load_settings(_env_file=None)
    assert "RETRY_WAIT_SCALE" in capsys.readouterr().err


def test_the_secret_half_of_the_bot_token_is_a_secret_on_its_own() -> None:
    settings = Settings(_env_file=None, telegram_bot_token="123456:AAE-secret-half-abcdefghijkl")
    assert "AAE-secret-half-abcdefghijkl" in settings.secrets()
    assert "123456:AAE-secret-half-abcdefghijkl" in settings.secrets()


def test_database_url_accepts_postgres_schemes_and_refuses_others(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("postgresql://u:p@db.example:5432/app", "postgres://u:p@db.example/app"):
        monkeypatch.setenv("DATABASE_URL", url)
        assert Settings().database_url.get_secret_value() == url
    monkeypatch.setenv("DATABASE_URL", "")
    assert Settings().database_url is None  # an empty variable is unset, not an error
    monkeypatch.setenv("DATABASE_URL", "mysql://u:secret-pw@db/app")
    with pytest.raises(ValidationError) as caught:
        Settings()
    lines = format_errors(caught.value)
    assert lines and lines[0].startswith("DATABASE_URL:") and "postgresql://" in lines[0]
    assert "secret-pw" not in "\n".join(lines)


def test_the_database_url_and_its_password_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgres://gw:p%40ss-w0rd@db.example:5432/app"
    monkeypatch.setenv("DATABASE_URL", url)
    secrets = Settings().secrets()
    assert url in secrets and "p%40ss-w0rd" in secrets and "p@ss-w0rd" in secrets
    assert database_url_shown(url) == "postgres://gw:***@db.example:5432/app"
    assert database_url_shown("postgresql://gw@db/app") == "postgresql://gw@db/app"


def test_lease_seconds_defaults_to_30_and_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().lease_seconds == 30
    monkeypatch.setenv("LEASE_SECONDS", "0")
    with pytest.raises(ValidationError):
        Settings()
