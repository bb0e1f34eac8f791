"""Reading a streamed chat completion: server-sent events to plain dicts.

The openai SDK turns every event into a `ChatCompletionChunk` pydantic object (type
introspection per field, per chunk). A chat answer is dozens of chunks, and the adapter only
reads five fields of each, so here the SDK sends the request (auth, base URL, timeouts, HTTP
error mapping) and we read the event stream ourselves: `json.loads` per event and nothing else.
What the SDK's own reader guarantees is kept:

- events are split per the SSE rules (`data:` lines joined by newlines, dispatched at a blank
  line; comments, `event:`, `id:` and `retry:` fields ignored), `[DONE]` ends the stream;
- an event carrying `{"error": ...}` raises `openai.APIError` with the provider's message;
- a timeout or broken connection while reading raises `APITimeoutError` / `APIConnectionError`;
- after `[DONE]` the rest of the body is read so the HTTP/1.1 connection goes back to the pool,
  and the response is always closed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai

STREAM_ERROR = "An error occurred during streaming"


async def stream_events(response: httpx2.Response) -> AsyncIterator[Any]:
    """Yield each event's JSON payload (usually a dict) until `[DONE]` or the end of the body."""
    try:
        data: list[str] = []
        lines = response.aiter_lines()
        async for line in lines:
            if line:
                if line.startswith("data:"):
                    data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            if not data:
                continue
            payload, data = "\n".join(data), []
            if payload.startswith("[DONE]"):
                async for _ in lines:  # drain: keeps the connection reusable
                    pass
                return
            yield _checked(json.loads(payload), response)
        if data and not data[0].startswith("[DONE]"):  # a last event without its blank line
            yield _checked(json.loads("\n".join(data)), response)
    except httpx2.TimeoutException as error:
        raise openai.APITimeoutError(request=response.request) from error
    except httpx2.TransportError as error:
        raise openai.APIConnectionError(request=response.request) from error
    finally:
        await response.aclose()


def _checked(event: Any, response: httpx2.Response) -> Any:
    if isinstance(event, dict) and event.get("error"):
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(message if isinstance(message, str) and message else STREAM_ERROR,
                              request=response.request, body=error)
    return event
