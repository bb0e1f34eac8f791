"""The composition root: every dependency built once at start and handed to what needs it.

No module-level singletons: the bot, the console, the CLI and the tests all call
`await build_services(settings)` and get their own store, tracer, token counter and LLM client.
Storage is SQLite under DATA_DIR, or PostgreSQL when DATABASE_URL is set: one `Database` engine
that every store is built on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from config.settings import Settings, database_url_shown
from core.access import Access
from core.clock import Clock
from core.context.artifacts import ArtifactStore
from core.context.hot_state import HotStateStore
from core.context.tokens import TokenCounter, counter_for_model
from core.failures.breaker import BreakerRegistry
from core.failures.dlq import DeadLetterQueue
from core.failures.escalation import Escalator, Outbox
from core.failures.retry import RetryPolicy
from core.failures.storage_errors import storage_reason
from core.llm_router import LLMRouter
from core.logs import redactor
from core.models import ModelCatalog, ModelsFileError
from core.ports import LLM, Speaker
from core.running import RunningTurns
from core.speech import OpenAICompatibleSpeaker
from core.store import (
    GATEWAY_DB,
    Chats,
    Database,
    History,
    Journal,
    PostgresDatabase,
    bump_counter,
    open_sqlite,
)
from core.store.access import AccessRecords
from core.store.chat_models import ChatModels
from core.store.pg_schema import migrate_postgres
from core.store.voice_replies import VoiceReplies
from core.throttle import Throttle
from core.tracing import Telemetry, setup_tracing
from core.transcribe import Transcriber
from core.usage import UsageLedger, WarningLog
from core.usage_prices import PriceTable

VERSION = "0.1.0"
SYSTEM_PROMPT_FILE = Path(__file__).resolve().parent.parent / "config" / "prompts" / "system.md"
log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a turn needs, built once."""

    settings: Settings
    clock: Clock
    db: Database  # the engine: SQLite (gateway.db) or PostgreSQL (DATABASE_URL)
    journal: Journal
    history: History
    chats: Chats
    counter: TokenCounter
    telemetry: Telemetry
    llm: LLM
    hot_state: HotStateStore
    artifacts: ArtifactStore
    ledger: UsageLedger
    warnings: WarningLog
    prices: PriceTable
    dlq: DeadLetterQueue
    outbox: Outbox
    escalator: Escalator
    breakers: BreakerRegistry
    retry_policy: RetryPolicy
    throttle: Throttle
    system_prompt: str
    models: ModelCatalog
    chat_models: ChatModels
    access: Access  # ACCESS_POLICY: the operator's decisions and pairing codes
    speaker: Speaker  # spoken answers (/voice on): TTS_MODEL on the LLM's endpoint
    voice_replies: VoiceReplies  # the chats that turned spoken answers on
    static_tokens: tuple[int, int] | None = None  # base system prompt and tool specs, counted once
    started_monotonic: float = field(default_factory=Clock.monotonic)
    mode: str = "console"
    last_error: dict[str, str] = field(default_factory=dict)
    running: RunningTurns = field(default_factory=RunningTurns)  # each chat's running turn, for /stop
    transcriber: Transcriber | None = None  # voice notes to text (TRANSCRIPTION_*); None: not built
    # Hooks the bot's runtime sets (the console and tests leave them None); core calls them directly.
    # Storage refused a write mid-turn: (update_id, reason) -> True the first time for that update.
    # Set by bot/storage_alarm.py; without it every such turn tells its user.
    on_storage_failure: Callable[[int, str], bool] | None = None
    # The circuit to the provider closed again: replay the DLQ entries an outage left.
    on_circuit_closed: Callable[[], None] | None = None
    # An LLM call succeeded without a breaker transition: entries waiting for the provider may go.
    on_llm_success: Callable[[], None] | None = None

    @property
    def tracer(self):  # noqa: ANN201 - opentelemetry Tracer
        return self.telemetry.tracer

    def is_operator_chat(self, chat_id: int) -> bool:
        return self.settings.operator_chat_id is not None and chat_id == self.settings.operator_chat_id

    def is_operator_user(self, user_id: int) -> bool:
        return self.settings.operator_chat_id is not None and user_id == self.settings.operator_chat_id

    async def is_allowed(self, user_id: int, chat_id: int | None = None) -> bool:
        """May this user chat (here: an approved group lets its members in)? See core/access.py."""
        return await self.access.is_allowed(user_id, chat_id)

    async def close(self) -> None:
        for client in (self.llm, self.speaker):
            close = getattr(client, "close", None)
            if close is not None:
                await close()
        if self.transcriber is not None:
            await self.transcriber.close()
        self.telemetry.shutdown()
        await self.db.close()


async def open_engine(settings: Settings) -> Database:
    """The database engine, migrated: PostgreSQL when DATABASE_URL is set, else gateway.db."""
    if settings.database_url is not None:
        db: Database = await PostgresDatabase.connect(settings.database_url.get_secret_value())
    else:
        probe_writable(settings.data_dir)
        db = open_sqlite(settings.data_dir / GATEWAY_DB)
    try:
        if db.dialect == "postgres":
            await migrate_postgres(db)
        # Fail at start, not at the first turn, if another process holds the write lock or the
        # database cannot take a write: one real commit (a count of opens, harmless to keep).
        async with db.transaction():
            await bump_counter(db, "storage_opened")
    except BaseException:
        await db.close()
        raise
    return db


async def build_services(settings: Settings, *, llm: LLM | None = None, tracing: bool = True,
                         speaker: Speaker | None = None) -> Services:
    """Open storage (running migrations), tracing and the LLM client for these settings."""
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    clock = Clock(settings.gateway_clock_offset_file)
    db = await open_engine(settings)
    counter = counter_for_model(settings.llm_model)
    models = ModelCatalog.from_settings(settings, path=settings.models_file)
    redact = redactor(settings.secrets())
    telemetry = setup_tracing(data_dir=data_dir, retention_days=settings.telemetry_retention_days,
                              service_version=VERSION, otlp_endpoint=settings.otel_exporter_otlp_endpoint,
                              enabled=tracing, redact=redact,
                              database_url=settings.database_url.get_secret_value() if settings.database_url else None)
    if llm is None:
        llm = LLMRouter(models, timeout_s=settings.llm_timeout_seconds, tracer=telemetry.tracer, counter=counter)
    if speaker is None:
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        speaker = OpenAICompatibleSpeaker(base_url=settings.llm_base_url, api_key=api_key, model=settings.tts_model,
                                          voice=settings.tts_voice, timeout_s=settings.llm_timeout_seconds,
                                          tracer=telemetry.tracer)
    artifacts = ArtifactStore(db, data_dir / "artifacts", counter=counter)

    async def archive(chat_id: int, markdown: str, label: str) -> str:
        info = await artifacts.put(content=markdown.encode(), media_type="text/markdown", chat_id=chat_id, user_id=None,
                             label=label, summary=label, kind="hot_state_archive", trace_id=None, now=clock.iso())
        return info.ref

    outbox = Outbox(db)
    return Services(
        settings=settings, clock=clock, db=db, journal=Journal(db), history=History(db), chats=Chats(db),
        counter=counter, telemetry=telemetry, llm=llm,
        hot_state=HotStateStore(db, counter=counter, max_tokens=settings.hot_state_max_tokens, archive=archive),
        artifacts=artifacts, ledger=UsageLedger(db), warnings=WarningLog(db), prices=PriceTable.load().overlaid(models.prices()),
        dlq=DeadLetterQueue(db), outbox=outbox,
        escalator=Escalator(db, outbox, operator_chat_id=settings.operator_chat_id,
                            cooldown_s=settings.escalation_cooldown_seconds,
                            logger=logging.getLogger("gateway.alerts")),
        breakers=BreakerRegistry(failure_threshold=settings.breaker_failure_threshold,
                                 reset_s=settings.breaker_reset_seconds),
        retry_policy=RetryPolicy.from_settings(settings),
        throttle=Throttle(per_minute=settings.user_messages_per_minute),
        system_prompt=SYSTEM_PROMPT_FILE.read_text(encoding="utf-8").strip(),
        models=models, chat_models=ChatModels(db),
        access=Access(AccessRecords(db), outbox, settings, clock),
        speaker=speaker, voice_replies=VoiceReplies(db),
        transcriber=Transcriber.from_settings(settings, telemetry.tracer),
    )


PROBE_BYTES = 64 * 1024


def probe_writable(data_dir: Path) -> None:
    """Write, sync and remove a small file in DATA_DIR: a read-only or full disk raises the
    OSError that names it (SQLite would only say "unable to open database file")."""
    probe = data_dir / ".write-probe"
    try:
        with open(probe, "wb") as out:
            out.write(b"\0" * PROBE_BYTES)
            out.flush()
            os.fsync(out.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


class StorageUnavailable(Exception):
    """Storage (DATA_DIR, or DATABASE_URL) cannot be used: a clear, one-line reason for the operator."""


class ModelsUnavailable(StorageUnavailable):
    """config/models.toml cannot be used: one line, caught wherever a start reports StorageUnavailable."""


async def open_services(settings: Settings, **kwargs: object) -> Services:
    """build_services, turning storage failures into one readable StorageUnavailable (a bad
    models file into ModelsUnavailable, which every caller reports the same way)."""
    import sqlite3

    try:
        return await build_services(settings, **kwargs)  # type: ignore[arg-type]
    except ModelsFileError as error:
        raise ModelsUnavailable(f"cannot use the models file: {error}") from None
    except psycopg.Error as error:  # PostgreSQL unreachable, refused the login, or a migration failed
        if settings.database_url is None:
            raise
        url = settings.database_url.get_secret_value()
        reason = redactor(settings.secrets())(storage_reason(error))
        raise StorageUnavailable(f"cannot use DATABASE_URL={database_url_shown(url)}: {reason}") from None
    except (OSError, sqlite3.Error) as error:
        reason = storage_reason(error)
        if "locked" in reason:
            reason += " (another process holds the database: is a second instance running?)"
        elif (isinstance(error, PermissionError) or getattr(error, "errno", None) == errno.EROFS
              or "readonly" in reason or "read-only" in reason.lower()):
            reason += " (DATA_DIR must be writable)"
        elif getattr(error, "errno", None) == errno.ENOSPC or "full" in reason or "No space" in reason:
            reason += " (free some disk space)"
        elif getattr(error, "errno", None) == errno.EFBIG:  # RLIMIT_FSIZE or a quota on the file's size
            reason += " (free some disk space or raise the file-size limit)"
        raise StorageUnavailable(f"cannot use DATA_DIR={settings.data_dir}: {reason}") from error
