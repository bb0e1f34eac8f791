"""The LLM stand-in for the benchmark and the soak, run in a process of its own.

Why a separate process: the Bot API stand-in, the load driver and this server would otherwise
share one interpreter lock, and on a 2-core machine the harness could become the bottleneck
that both bots are measured against. `tests/fakes/llm_api.FakeLLM` does the protocol work;
this module only chooses the answers:

- every completion answers at once (no delay between chunks) with `answer_for(question)`, a
  fixed-length plain-text answer the harness can recognise in the chat;
- with `--fault-rate R --seed S`, a seeded random share R of the requests fails instead, evenly
  split between a hang past the client's timeout, 429, 500 and a malformed 200 answer.

Protocol with the parent: prints `PORT <n>` once it listens on 127.0.0.1, answers
`GET /_bench/stats` with the counts of what it served, and stops on SIGTERM, when its parent
goes away, or after `--max-seconds` (bounded whatever happens).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from bench.common import LLM_KEY, MODEL, answer_for  # noqa: E402
from tests.fakes.llm_api import (  # noqa: E402
    MALFORMED_KINDS,
    Error,
    FakeLLM,
    Hang,
    Item,
    Malformed,
    RecordedRequest,
    Reply,
)

FAULT_KINDS = ("hang", "rate_limit", "server_error", "malformed")


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


class BenchLLM(FakeLLM):
    """FakeLLM that answers `answer_for(question)` and injects a seeded fault mix."""

    def __init__(self, *, answer_chars: int, fault_rate: float, seed: int, hang_s: float) -> None:
        super().__init__(MODEL, api_key=LLM_KEY)
        self.answer_chars = answer_chars
        self.fault_rate = fault_rate
        self.hang_s = hang_s
        self.random = random.Random(seed)
        self.served: Counter[str] = Counter()
        self.set_default(self._choose)

    def _choose(self, body: dict[str, Any]) -> Item:
        answer = Reply(answer_for(last_user_text(body), self.answer_chars))
        kind = "ok"
        if self.fault_rate > 0 and self.random.random() < self.fault_rate:
            kind = self.random.choice(FAULT_KINDS)
        self.served[kind] += 1
        if kind == "hang":
            return Hang(self.hang_s, then=answer)
        if kind == "rate_limit":
            return Error.rate_limited(retry_after=1)
        if kind == "server_error":
            return Error.server_error("bench: injected outage")
        if kind == "malformed":
            malformed = self.random.choice([k for k in MALFORMED_KINDS if k != "bad_tool_json"])
            self.served[f"malformed:{malformed}"] += 1
            return Malformed(malformed)
        return answer

    async def _record(self, request: web.Request) -> RecordedRequest:
        # Like FakeLLM._record, but nothing is kept: a long soak must not grow the stand-in.
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            self.served["requests"] += 1
        return RecordedRequest(request.method, request.path, dict(request.headers), body, b"", time.monotonic())

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._error_middleware], client_max_size=32 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._handle_completions)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_get("/_bench/stats", self._handle_stats)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    async def _handle_stats(self, _request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(dict(self.served))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-chars", type=int, default=200)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-seconds", type=float, default=3.0)
    parser.add_argument("--max-seconds", type=float, default=3 * 3600)
    args = parser.parse_args(argv)
    server = BenchLLM(answer_chars=args.answer_chars, fault_rate=args.fault_rate, seed=args.seed,
                      hang_s=args.hang_seconds).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"PORT {server.port}", flush=True)
    parent, deadline = os.getppid(), time.monotonic() + args.max_seconds
    while not stop.wait(1.0):
        if os.getppid() != parent or time.monotonic() > deadline:
            break
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
