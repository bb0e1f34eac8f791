"""One typed settings object, read from the environment and a `.env` file.

pydantic-settings does the parsing; `load_settings` turns a validation failure into one
readable line per problem (what is wrong and how to fix it) instead of a traceback.
The variable names are an outward contract (DESIGN.md): keep them exactly.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ANYONE = "*"
TEST_HOOKS_SWITCH = "GATEWAY_TEST_HOOKS"


class TestHooks(BaseModel):
    """Knobs for the test suite and the benchmarks, not for users: kept out of `Settings`' fields
    (so neither `.env`, `doctor` nor the README offers them) and read from the environment only
    when GATEWAY_TEST_HOOKS=1, so a stray RETRY_WAIT_SCALE=0 in production cannot turn every
    retry into a hot loop, nor a clock file move the budgets' day."""

    __test__ = False  # not a pytest test class, despite the name
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Waits between retries and delivery attempts are multiplied by this; tests set 0.
    retry_wait_scale: float = Field(default=1.0, ge=0)
    # A file holding a number of seconds added to the wall clock (see core/clock.py).
    gateway_clock_offset_file: Path | None = None
    # Another models file than the shipped config/models.toml (see core/models.py).
    models_file: Path | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TestHooks:
        environ = os.environ if environ is None else environ
        if environ.get(TEST_HOOKS_SWITCH) != "1":
            return cls()
        values = {name: environ[name.upper()] for name in cls.model_fields if environ.get(name.upper())}
        return cls(**values)


class Settings(BaseSettings):
    """Every knob of the gateway; safe defaults for all but the secrets."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="forbid", case_sensitive=False,
        env_ignore_empty=True,
    )

    telegram_bot_token: SecretStr | None = None
    telegram_api_base_url: str = "https://api.telegram.org"
    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_API_KEY", "OPENAI_API_KEY")
    )
    llm_model: str = "gpt-4o-mini"
    llm_models: str = ""  # more models users may choose with /model (LLM_MODEL is always one)
    llm_fallback_models: str = ""  # tried in order when the chat's model is down (core/models.py)
    llm_context_tokens: int = Field(default=128000, ge=1024)
    llm_max_output_tokens: int = Field(default=2048, ge=16)
    tts_model: str = Field(default="tts-1", min_length=1)  # spoken answers (/voice on): POST {base}/audio/speech
    tts_voice: str = Field(default="alloy", min_length=1)
    llm_vision: bool = True  # images go to the model (false: kept as artifacts, the user is told)
    image_history_turns: int = Field(default=3, ge=0)  # later turns an image still rides in the prompt
    operator_chat_id: int | None = None
    allowed_user_ids: str = ""
    access_policy: Literal["pairing", "allowlist", "open"] | None = None  # None: see `access_mode`
    data_dir: Path = Path("./data")
    # All state in PostgreSQL (core/store/engine.py); unset: SQLite under DATA_DIR. A secret: it
    # usually carries a password (`postgres://user:password@host/db`, as Heroku hands it out).
    database_url: SecretStr | None = None
    lease_seconds: float = Field(default=30.0, gt=0)  # a crashed instance's chat lease expires after this
    webhook_url: str | None = None
    port: int = Field(default=8080, ge=1, le=65535)
    webhook_secret: SecretStr | None = None
    hot_state_max_tokens: int = Field(default=1000, ge=50)
    llm_max_retries: int = Field(default=1, ge=0, le=5)
    llm_timeout_seconds: float = Field(default=60.0, gt=0)
    breaker_failure_threshold: int = Field(default=3, ge=1)
    breaker_reset_seconds: float = Field(default=60.0, ge=0)
    escalation_cooldown_seconds: float = Field(default=300.0, ge=0)
    user_daily_token_budget: int = Field(default=200000, ge=0)
    user_messages_per_minute: int = Field(default=60, ge=0)
    telegram_sends_per_second: float = Field(default=30.0, ge=0)
    monthly_budget_usd: float = Field(default=0.0, ge=0)
    dlq_auto_replay: bool = True
    telemetry_retention_days: int = Field(default=30, ge=1)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    otel_exporter_otlp_endpoint: str | None = None
    # Voice notes (core/transcribe.py): speech to text at `{base}/audio/transcriptions`.
    transcription_model: str = "whisper-1"
    transcription_base_url: str | None = None  # None: LLM_BASE_URL
    transcription_api_key: SecretStr | None = None  # None: LLM_API_KEY
    voice_max_seconds: int = Field(default=600, ge=1)
    voice_show_transcript: bool = True
    _test_hooks: TestHooks = PrivateAttr(default_factory=lambda: TestHooks())

    def __init__(self, test_hooks: TestHooks | None = None, **values: Any) -> None:
        """As BaseSettings; the test hooks' names are accepted as keyword arguments too (tests and
        benchmarks build Settings in-process), never from `.env` (`extra="forbid"` refuses them)."""
        hook_values = {name: values.pop(name) for name in TestHooks.model_fields if name in values}
        super().__init__(**values)
        hooks = test_hooks if test_hooks is not None else TestHooks.from_environ()
        if hook_values:
            hooks = TestHooks(**{**hooks.model_dump(), **hook_values})
        self._test_hooks = hooks

    # Test hooks, read-only: the retry loop, the outbox and the clock read them here.
    @property
    def retry_wait_scale(self) -> float:
        return self._test_hooks.retry_wait_scale

    @property
    def gateway_clock_offset_file(self) -> Path | None:
        return self._test_hooks.gateway_clock_offset_file

    @property
    def models_file(self) -> Path | None:
        return self._test_hooks.models_file

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("allowed_user_ids")
    @classmethod
    def _check_allowed(cls, value: str) -> str:
        value = value.strip()
        if value in ("", ANYONE):
            return value
        for part in value.split(","):
            if part.strip() and not part.strip().lstrip("-").isdigit():
                raise ValueError(f"{part.strip()!r} is not a Telegram user id; use numbers separated by commas, or *")
        return value

    @field_validator("access_policy", mode="before")
    @classmethod
    def _lower_policy(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("access_policy")
    @classmethod
    def _check_policy(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value == "pairing" and info.data.get("operator_chat_id") is None:
            raise ValueError("pairing needs OPERATOR_CHAT_ID (the operator approves the codes)")
        return value

    @field_validator("transcription_base_url")
    @classmethod
    def _check_optional_url(cls, value: str | None) -> str | None:
        return None if value in (None, "") else cls._check_url(value)

    @field_validator("telegram_api_base_url", "llm_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        scheme = urlparse(value.get_secret_value()).scheme
        if scheme not in ("postgres", "postgresql"):
            raise ValueError(f"must be a postgresql:// (or postgres://) URL, not {scheme or 'a bare string'}")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parsed = urlparse(value)
        if parsed.scheme != "https" and parsed.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError("Telegram only delivers webhooks to https URLs")
        return value

    # Derived values -----------------------------------------------------------------
    @property
    def anyone_allowed(self) -> bool:
        return self.allowed_user_ids == ANYONE

    @property
    def access_mode(self) -> Literal["pairing", "allowlist", "open"]:
        """ACCESS_POLICY as it applies: `ALLOWED_USER_IDS=*` means open; unset, pairing when there
        is an operator to approve codes, else the allowlist."""
        if self.anyone_allowed:
            return "open"
        if self.access_policy is not None:
            return self.access_policy
        return "pairing" if self.operator_chat_id is not None else "allowlist"

    @property
    def allowed_ids(self) -> frozenset[int]:
        if self.anyone_allowed or not self.allowed_user_ids:
            return frozenset()
        return frozenset(int(p) for p in self.allowed_user_ids.split(",") if p.strip())

    @property
    def mode(self) -> Literal["webhook", "polling"]:
        return "webhook" if self.webhook_url else "polling"

    @property
    def webhook_secret_value(self) -> str:
        """Telegram allows 1-256 chars of A-Z a-z 0-9 _ -; derived from the token when unset."""
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value()
        token = self.telegram_bot_token.get_secret_value() if self.telegram_bot_token else ""
        return hashlib.sha256(b"webhook:" + token.encode()).hexdigest()[:48]

    @property
    def llm_host(self) -> str:
        return urlparse(self.llm_base_url).netloc

    def secrets(self) -> list[str]:
        """Values that must never reach logs, spans, replies or stored rows."""
        values = [self.telegram_bot_token, self.llm_api_key, self.webhook_secret, self.transcription_api_key]
        found = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        if self.database_url is not None:
            found += database_url_secrets(self.database_url.get_secret_value())
        found += _model_keys(self.models_file or SHIPPED_MODELS_FILE)
        if self.telegram_bot_token is not None:
            found.append(self.webhook_secret_value)
            # The part after "id:" on its own: a library that masks or reformats the bot id
            # (or a URL split at the colon) still leaks it.
            bot_id, _, secret_half = self.telegram_bot_token.get_secret_value().partition(":")
            if bot_id and secret_half:
                found.append(secret_half)
        return found


def database_url_secrets(url: str) -> list[str]:
    """What of a DATABASE_URL must not be shown: the whole URL and its password (also
    percent-decoded, as a driver's error message may print it)."""
    from urllib.parse import unquote

    found = [url]
    password = urlparse(url).password
    if password:
        found += [password, unquote(password)]
    return found


def database_url_shown(url: str) -> str:
    """A DATABASE_URL as logs and doctor show it: the password replaced by ***."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


SHIPPED_MODELS_FILE = Path(__file__).resolve().parent / "models.toml"


def _model_keys(path: Path) -> list[str]:
    """The keys of the providers config/models.toml names (by their variables' names): secrets too.
    A file that cannot be read here is reported by core/models.py at start."""
    try:
        models = tomllib.loads(path.read_text(encoding="utf-8")).get("models", {})
        names = {str(entry["api_key_env"]) for entry in models.values() if "api_key_env" in entry}
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    return [os.environ[name] for name in sorted(names) if os.environ.get(name)]


_HINTS = {
    "telegram_bot_token": "create a bot with @BotFather and export TELEGRAM_BOT_TOKEN",
    "llm_api_key": "export LLM_API_KEY (or OPENAI_API_KEY) with your provider's key",
}


def format_errors(error: ValidationError) -> list[str]:
    """One line per problem, naming the environment variable, never echoing a secret."""
    lines = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else "settings"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting (typo?) in .env"
        elif not any(word in name for word in ("secret", "token", "key", "database_url")):  # may carry a password
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"{name.upper()}: {message}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Read settings, or print one clear line per problem and exit with status 2."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        for line in format_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def require_token(settings: Settings) -> str:
    """The bot token, or one readable line and exit 2 (only `run` and `doctor` need it)."""
    if settings.telegram_bot_token is None or not settings.telegram_bot_token.get_secret_value():
        print(f"configuration error: TELEGRAM_BOT_TOKEN is not set: {_HINTS['telegram_bot_token']}", file=sys.stderr)
        raise SystemExit(2)
    return settings.telegram_bot_token.get_secret_value()
