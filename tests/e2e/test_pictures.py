"""Pictures end to end: the real bot process, the Bot API and LLM stand-ins over HTTP.

A photo reaches the model as a `data:` URL content part with its caption (never a Telegram
file URL, which carries the token); it leaves the prompt after IMAGE_HISTORY_TURNS turns, its
ref staying in history, and `view_image` brings it back; without vision the user is told.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re

import pytest
from PIL import Image

from tests.e2e.harness import TEST_TOKEN
from tests.fakes.llm_api import Reply, ToolCalls
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
REF = re.compile(r"\[Image (artifact://[0-9a-f]{12,64})")


def photo(width: int, height: int, seed: int = 1) -> bytes:
    image = Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def decoded(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header.startswith("data:image/") and header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def ask(fake_telegram: FakeTelegram, text: str, answer: str) -> None:
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))
    fake_telegram.wait_for_text(USER, answer, timeout=20)


def send_photo(fake_telegram: FakeTelegram, caption: str | None, seed: int = 1) -> None:
    big = photo(2600, 1300, seed)
    fake_telegram.push_update(fake_telegram.photo_update(
        USER, USER, [(photo(90, 45, seed), 90, 45), (big, 2600, 1300)], caption=caption))


def prompt_totals(bot) -> list[int]:  # noqa: ANN001 - the BotFactory fixture
    return [row[0] for row in bot.query("SELECT total_tokens FROM prompt_metrics ORDER BY at")]


def test_a_photo_reaches_the_model_as_a_data_url_with_its_caption(bot, fake_telegram, fake_llm) -> None:
    bot()
    ask(fake_telegram, "hello", "echo: hello")
    text_total = prompt_totals(bot)[-1]
    fake_llm.enqueue(Reply("A grey square of noise."))
    send_photo(fake_telegram, "What is in this picture?")
    fake_telegram.wait_for_text(USER, "A grey square of noise.", timeout=20)
    request = fake_llm.last_request()
    current = request.messages[-1]
    assert current["role"] == "user" and current["content"][0]["type"] == "text"
    assert current["content"][0]["text"].startswith("What is in this picture?")
    assert REF.search(current["content"][0]["text"])
    [url] = request.image_urls[-1]
    with decoded(url) as image:  # the largest size, scaled to 2048 px on its longest side
        assert image.size == (2048, 1024)
    body = request.raw.decode()
    assert TEST_TOKEN not in body and TEST_TOKEN.split(":", 1)[1] not in body
    assert "api.telegram.org" not in body and "/file/bot" not in body
    # The largest size was downloaded, once; the small one was not.
    assert len(fake_telegram.calls("getFile")) == 1
    # The prompt's budget counts the picture by the tile rule (2048x1024 -> 1536x768: 6 tiles).
    first_total = prompt_totals(bot)[-1]
    assert first_total - text_total >= 1105

    # An image sent as a document is a picture too (a small PNG keeps its format).
    png = io.BytesIO()
    Image.new("RGB", (300, 200), "red").save(png, "PNG")
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, png.getvalue(), "red.png", "image/png",
                                                            caption="And this one?"))
    fake_telegram.wait_for_text(USER, "echo: And this one?", timeout=20)
    request = fake_llm.last_request()
    [url] = request.image_urls[-1]
    assert url.startswith("data:image/png;base64,")
    with decoded(url) as image:
        assert image.size == (300, 200)
    # Two pictures ride in this prompt: the earlier photo (1105 tokens, again) and the PNG (255).
    assert sum(map(bool, request.image_urls)) == 2
    assert prompt_totals(bot)[-1] - first_total >= 255


def test_a_picture_leaves_the_prompt_after_image_history_turns_and_view_image_brings_it_back(
        bot, fake_telegram, fake_llm) -> None:
    bot(IMAGE_HISTORY_TURNS="2")
    send_photo(fake_telegram, "Remember this one.", seed=2)
    fake_telegram.wait_for_text(USER, "echo: Remember this one.", timeout=20)
    ref = REF.search(fake_llm.last_request().messages[-1]["content"][0]["text"]).group(1)

    for n in (1, 2):  # the next IMAGE_HISTORY_TURNS turns still carry it, on its own message
        ask(fake_telegram, f"question {n}", f"echo: question {n}")
        request = fake_llm.last_request()
        carrying = [i for i, urls in enumerate(request.image_urls) if urls]
        assert len(carrying) == 1 and ref in json.dumps(request.messages[carrying[0]])
    ask(fake_telegram, "question 3", "echo: question 3")
    request = fake_llm.last_request()
    assert not any(request.image_urls), "the picture should have left the prompt"
    history = [m for m in request.messages if m["role"] == "user"]
    assert any(ref in m["content"] and "Remember this one." in m["content"] for m in history)

    fake_llm.enqueue(ToolCalls([("call_view", "view_image", json.dumps({"ref": ref}))]),
                     Reply("Yes, it is the noisy one."))
    ask(fake_telegram, "look at the first picture again", "Yes, it is the noisy one.")
    request = fake_llm.last_request()
    assert [m["role"] for m in request.messages][-3:] == ["assistant", "tool", "user"]
    assert json.loads(request.messages[-2]["content"])["ok"] is True
    [url] = request.image_urls[-1]
    with decoded(url) as image:
        assert image.size == (2048, 1024)
    # For one turn only: the next turn goes without it.
    ask(fake_telegram, "thanks", "echo: thanks")
    request = fake_llm.last_request()
    assert not any(request.image_urls)
    assert ref in request.messages[0]["content"]  # the hot state lists the picture: it can be found later

    # A ref that is not a picture of this chat is the model's to fix, told as the tool's result.
    fake_llm.enqueue(ToolCalls([("call_bad", "view_image", json.dumps({"ref": "artifact://0123456789abcdef"}))]),
                     Reply("I cannot find that one."))
    ask(fake_telegram, "show me the other one", "I cannot find that one.")
    request = fake_llm.last_request()
    result = json.loads(request.messages[-1]["content"])
    assert result["ok"] is False and "no artifact" in result["error"] and not any(request.image_urls)


def test_without_vision_the_picture_is_kept_and_the_user_is_told(bot, fake_telegram, fake_llm) -> None:
    bot(LLM_VISION="false")
    send_photo(fake_telegram, "How many cats?", seed=3)
    fake_telegram.wait_for_text(USER, "echo: How many cats?", timeout=20)
    texts = fake_telegram.sent_texts(USER)
    assert any("cannot see images" in t and "artifact://" in t for t in texts)
    request = fake_llm.last_request()
    assert not any(request.image_urls) and "cannot see images" in request.messages[-1]["content"]
    completions = fake_llm.count()
    send_photo(fake_telegram, None, seed=4)  # no caption: the notice is the answer, no model call

    def notices() -> list[str]:
        return [t for t in fake_telegram.sent_texts(USER) if "I kept your picture as artifact://" in t]

    fake_telegram.wait_for(lambda: len(notices()) == 2, timeout=20)
    assert "Answering your caption" in notices()[0] and "Answering your caption" not in notices()[1]
    assert fake_llm.count() == completions == 1
    assert not [t for t in fake_telegram.sent_texts(USER) if "ref:" in t]
