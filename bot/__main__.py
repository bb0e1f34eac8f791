"""Command line: `python -m bot [run|console|doctor|trace ID|traces|dlq …]` (run is the default)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from config.settings import Settings, load_settings
from core.logs import redactor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Telegram gateway to an LLM agent")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the bot (polling, or webhook when WEBHOOK_URL is set)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--webhook", action="store_true", help="insist on webhook mode (Procfile web:)")
    mode.add_argument("--polling", action="store_true", help="insist on long polling (Procfile worker:)")
    sub.add_parser("console", help="chat in the terminal through the same pipeline")
    sub.add_parser("doctor", help="check settings, storage, the LLM endpoint and the Bot API")
    trace = sub.add_parser("trace", help="show one turn's spans as a tree")
    trace.add_argument("id", help="the trace id (32 hex) or its first 8 characters (the ref)")
    trace.add_argument("--json", action="store_true", help="one JSON object per span")
    traces = sub.add_parser("traces", help="list recent turns")
    traces.add_argument("--last", type=int, default=20)
    dlq = sub.add_parser("dlq", help="inspect and act on the dead-letter queue")
    dlq.add_argument("action", choices=["list", "show", "replay", "discard"])
    dlq.add_argument("id", nargs="?", help="entry id (or 'all' for replay)")
    dlq.add_argument("--json", action="store_true", help="with list: one JSON object per entry")
    dlq.add_argument("--status", default="pending", help="with list: pending, replayed, discarded, resolved, all")
    sub.add_parser("migrate-to-postgres", help="copy DATA_DIR's SQLite state into the empty database at DATABASE_URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    with redacted_output(settings.secrets()):
        return _dispatch(args, settings)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command or "run"
    if command == "run":
        from bot.app import serve

        if getattr(args, "webhook", False) and not settings.webhook_url:
            print("configuration error: WEBHOOK_URL is not set: the web process needs the public https URL "
                  "Telegram should post to (e.g. https://your-app.example.com/telegram)", file=sys.stderr)
            return 2
        if getattr(args, "polling", False) and settings.webhook_url:
            print("configuration error: WEBHOOK_URL is set but this is the polling worker: unset it, or run the "
                  "web process instead (never both: Telegram allows one consumer)", file=sys.stderr)
            return 2
        with asyncio.Runner(loop_factory=_fast_loop_factory()) as runner:
            return runner.run(serve(settings))
    if command == "console":
        from bot.console import run_console

        return asyncio.run(run_console(settings))
    if command == "doctor":
        from bot.doctor import run_doctor

        return asyncio.run(run_doctor(settings))
    if command == "trace":
        return _trace(settings, args.id, as_json=args.json)
    if command == "traces":
        from core.telemetry import format_turns, recent_turns, span_source

        print(format_turns(recent_turns(span_source(settings), last=max(1, args.last))))
        return 0
    if command == "dlq":
        from bot.dlq_cli import run_dlq

        return asyncio.run(run_dlq(settings, args.action, args.id, as_json=args.json, status=args.status))
    if command == "migrate-to-postgres":
        from bot.migrate_cli import run_migrate_to_postgres

        return asyncio.run(run_migrate_to_postgres(settings))
    return 2


class RedactingStream:
    """A last resort in front of stdout/stderr: every line is passed through the secrets redactor
    before it is written. Log records are redacted already (core/logs.py); this catches what does
    not go through logging: tracebacks (sys.excepthook, "Task exception was never retrieved"),
    library messages printed on the way out (PTB's InvalidToken names the token; httpx errors
    carry the request URL, which holds it), warnings written before logging is set up.
    Whole lines are buffered so a secret split across two writes is still found."""

    def __init__(self, stream: TextIO, redact: Callable[[str], str]) -> None:
        self.stream = stream
        self._redact = redact
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, _, self._pending = self._pending.rpartition("\n")
            self.stream.write(self._redact(lines + "\n"))
        return len(text)

    def flush(self) -> None:  # a prompt without a newline (the console's "you> ") goes out here
        if self._pending:
            self.stream.write(self._redact(self._pending))
            self._pending = ""
        self.stream.flush()

    def __getattr__(self, name: str) -> object:  # encoding, fileno, isatty, buffer…
        return getattr(self.stream, name)


@contextmanager
def redacted_output(secrets: list[str]) -> Iterator[None]:
    """sys.stdout and sys.stderr redacted for the duration (restored after, flushed)."""
    redact = redactor(secrets)
    saved = sys.stdout, sys.stderr
    sys.stdout = RedactingStream(saved[0], redact)  # type: ignore[assignment]
    sys.stderr = RedactingStream(saved[1], redact)  # type: ignore[assignment]
    try:
        yield
    except BaseException:  # an uncaught exception prints its traceback after we return: redact it too
        sys.excepthook = _redacting_excepthook(redact)
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def _redacting_excepthook(redact: Callable[[str], str]) -> Callable[..., None]:
    import traceback

    def hook(kind: type[BaseException], value: BaseException, tb: object) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))  # type: ignore[arg-type]

    return hook


def _fast_loop_factory():  # noqa: ANN202
    """uvloop's event loop when it is installed (Linux, macOS): the same asyncio API with less CPU
    per socket operation (see README, Benchmarks); else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _trace(settings, ref: str, *, as_json: bool) -> int:  # noqa: ANN001
    from core.telemetry import find_trace, format_tree, span_source, spans_json_lines

    try:
        spans = find_trace(span_source(settings), ref.strip().lower())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not spans:
        print(f"no trace matches {ref!r} in {span_source(settings)}", file=sys.stderr)
        return 1
    if as_json:
        for line in spans_json_lines(spans):
            print(line)
    else:
        print(format_tree(spans))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)

