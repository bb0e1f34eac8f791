"""Run the gateway with experimental patches applied in memory, to size a fix before anyone makes it.

    python -m bench.what_if --patch lazy-typing --patch lazy-draft [run]
    python -m bench.run --what-if lazy-typing --what-if lazy-draft     # the benchmark, ours patched

Nothing on disk changes: each patch replaces one name in a loaded module with the behaviour a
suggested fix would have, so the benchmark can show what the fix is worth. A patch that no
longer matches the code it targets stops the start with a message instead of measuring nonsense.

- lazy-typing: send the first "typing…" only if no text has streamed after FIRST_TYPING_S
  (fast answers need no chat action: one Bot API call less per turn).
- lazy-draft: send the first streamed draft only after EDIT_INTERVAL_S of streaming (an answer
  that is complete within a second goes out as one message instead of a draft plus an edit).
- no-sdk-transform: skip the openai SDK's request transform (a recursive walk over the messages
  and the tool schemas with TypedDict introspection); our payload is plain JSON already.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIRST_TYPING_S = 1.0


def _require(module: object, name: str) -> None:
    if not hasattr(module, name):
        raise SystemExit(f"what-if: {getattr(module, '__name__', module)}.{name} is gone; update bench/what_if.py")


def lazy_typing() -> None:
    import core.agent as agent

    _require(agent, "_keep_typing")
    every_s = getattr(agent, "TYPING_EVERY_S", 4.5)

    async def keep_typing(turn) -> None:  # noqa: ANN001 - core.pipeline.Turn
        await asyncio.sleep(FIRST_TYPING_S)
        while not getattr(turn, "drafting", False):
            with contextlib.suppress(Exception):
                await turn.send("typing")
            await asyncio.sleep(every_s)

    agent._keep_typing = keep_typing


def lazy_draft() -> None:
    import bot.channel as channel

    _require(channel, "_Draft")
    original = channel._Draft

    @dataclass
    class Draft(original):  # type: ignore[misc, valid-type]
        edited_at: float = field(default_factory=time.monotonic)

    channel._Draft = Draft


def no_sdk_transform() -> None:
    import openai.resources.chat.completions.completions as completions

    _require(completions, "async_maybe_transform")

    from openai._types import NotGiven, Omit

    async def strip_sentinels(data, expected_type):  # noqa: ANN001, ANN202 - mirrors the SDK's signature
        # What the transform does that our payload needs: drop the "not given" parameters.
        if not isinstance(data, dict):
            return data
        return {key: value for key, value in data.items() if not isinstance(value, NotGiven | Omit)}

    completions.async_maybe_transform = strip_sentinels


PATCHES: dict[str, Callable[[], None]] = {
    "lazy-typing": lazy_typing,
    "lazy-draft": lazy_draft,
    "no-sdk-transform": no_sdk_transform,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.what_if", description=__doc__.splitlines()[0])
    parser.add_argument("--patch", choices=sorted(PATCHES), action="append", default=[])
    args, rest = parser.parse_known_args(argv)
    for name in args.patch:
        PATCHES[name]()
    from bot.__main__ import main as bot_main

    return bot_main(rest or ["run"])


if __name__ == "__main__":
    sys.exit(main())
