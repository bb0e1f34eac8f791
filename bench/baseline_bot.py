"""The bot people write instead: python-telegram-bot + the openai SDK in one file.

This is the reference the benchmark (`python -m bench.run`) measures the gateway against, so
it is written the way plain-script Telegram LLM bots are written, and deliberately no better:

- one MessageHandler for text; the chat's history lives in a dict in memory (lost on restart,
  unbounded, shared by concurrent turns of the same chat without a lock);
- `AsyncOpenAI().chat.completions.create(...)` without streaming (what most scripts do: wait for
  the whole answer, then `reply_text` it once);
- no journal, no tracing, no validation, no budgets, no retries beyond the SDK's defaults,
  no rate limiter; errors are only logged by PTB;
- long polling with `run_polling()`; `concurrent_updates(True)` (PTB's 256 at a time), which is
  the fair choice against a gateway that runs 64 turns at once: without it PTB handles one
  update at a time and the baseline would lose on throughput for a reason nobody keeps.

No rate limiter, as in most such scripts: against the stand-in it may send faster than the 30
messages per second Telegram allows a bot (real Telegram would answer 429 and, with nothing to
retry, the reply would be lost). `BASELINE_RATE_LIMITER=1` (set by `bench.run
--paced`) gives it PTB's AIORateLimiter, to compare both bots at Telegram's pace.

Settings come from the same environment variables the gateway reads: TELEGRAM_BOT_TOKEN,
TELEGRAM_API_BASE_URL, LLM_BASE_URL, LLM_API_KEY, LLM_MODEL.

    python bench/baseline_bot.py
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from openai import AsyncOpenAI
from telegram import Update
from telegram.ext import AIORateLimiter, Application, ContextTypes, MessageHandler, filters

SYSTEM_PROMPT = "You are a helpful assistant in a Telegram chat. Answer briefly."

TOKEN = os.environ["TELEGRAM_BOT_TOKEN"]
API_ROOT = os.environ.get("TELEGRAM_API_BASE_URL", "https://api.telegram.org").rstrip("/")
MODEL = os.environ.get("LLM_MODEL", "gpt-4o-mini")
client = AsyncOpenAI(base_url=os.environ.get("LLM_BASE_URL", "https://api.openai.com/v1"),
                     api_key=os.environ.get("LLM_API_KEY", "not-needed"))
history: dict[int, list[dict[str, str]]] = defaultdict(list)


async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send the chat's history and the new message to the model; reply with its answer."""
    chat = history[update.effective_chat.id]
    chat.append({"role": "user", "content": update.message.text})
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": SYSTEM_PROMPT}, *chat])
    answer = response.choices[0].message.content or "(no answer)"
    chat.append({"role": "assistant", "content": answer})
    await update.message.reply_text(answer)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    builder = (Application.builder().token(TOKEN)
               .base_url(f"{API_ROOT}/bot").base_file_url(f"{API_ROOT}/file/bot")
               .concurrent_updates(True))
    if os.environ.get("BASELINE_RATE_LIMITER") == "1":
        builder = builder.rate_limiter(AIORateLimiter())
    application = builder.build()
    application.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, on_message))
    application.run_polling(allowed_updates=Update.ALL_TYPES)


if __name__ == "__main__":
    main()
