"""Logging: one line per event on stdout, with the trace id, never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.logs import REDACTED, configure_logging, redactor
from core.tracing import current_trace_id, new_turn_span, setup_tracing

TOKEN = "123456:AAbbCCddEE-secret_token"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "openai")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


def test_redactor_covers_raw_and_url_encoded_forms() -> None:
    redact = redactor([TOKEN, "", "ab"])  # empty and too-short values are ignored
    text = f"https://api.telegram.org/bot{TOKEN}/getMe and bot123456%3AAAbbCCddEE-secret_token about"
    assert redact(text) == f"https://api.telegram.org/bot{REDACTED}/getMe and bot{REDACTED} about"
    assert redactor([])("nothing to hide") == "nothing to hide"


def test_text_lines_carry_the_trace_id_and_hide_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", fmt="text", secrets=[TOKEN])
    log = logging.getLogger("core.pipeline")
    telemetry = setup_tracing(data_dir=tmp_path, enabled=False)
    log.info("outside")
    with new_turn_span(telemetry.tracer):
        trace_id = current_trace_id()
        log.info("calling %s", f"https://api.telegram.org/bot{TOKEN}/sendMessage")
        try:
            raise RuntimeError(f"bad url /bot{TOKEN}/x")
        except RuntimeError:
            log.exception("failed")
    telemetry.shutdown()
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "trace=- outside" in lines[0] and " INFO " in lines[0] and "core.pipeline" in lines[0]
    assert f"trace={trace_id} calling https://api.telegram.org/bot{REDACTED}/sendMessage" in lines[1]
    assert TOKEN not in out and "RuntimeError: bad url" in out


def test_json_lines_carry_the_trace_id_and_hide_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="DEBUG", fmt="json", secrets=[TOKEN])
    log = logging.getLogger("bot.app")
    telemetry = setup_tracing(data_dir=tmp_path, enabled=False)
    with new_turn_span(telemetry.tracer):
        trace_id = current_trace_id()
        log.debug("token %s", TOKEN)
        try:
            raise ValueError(TOKEN)
        except ValueError:
            log.exception("oops\nsecond line")
    log.warning("after")
    telemetry.shutdown()
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 3 and TOKEN not in out
    assert set(events[0]) == {"time", "level", "logger", "message", "trace_id"}
    assert events[0]["message"] == f"token {REDACTED}" and events[0]["trace_id"] == trace_id
    assert events[1]["level"] == "ERROR" and "ValueError" in events[1]["exc_info"]
    assert events[2]["trace_id"] == "-" and events[2]["time"].endswith("Z")


def test_http_client_loggers_are_silenced_and_setup_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="INFO", fmt="text", secrets=[TOKEN])
    configure_logging(level="INFO", fmt="text", secrets=[TOKEN])
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org/bot.../getUpdates")
    logging.getLogger("httpcore.http11").debug("send_request_headers")
    logging.getLogger("telegram.ext").info("kept")
    out = capsys.readouterr().out
    assert "HTTP Request" not in out and "send_request_headers" not in out
    assert "kept" in out and len(out.splitlines()) == 1
